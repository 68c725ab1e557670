"""``edgecl keygen`` and ``edgecl sign``: Ed25519 keys and signed bundles (``edgecl_runtime.signing``, extra ``[sign]``)."""

from __future__ import annotations

import click

from .common import fail, main


@main.command()
@click.argument("key", type=click.Path(dir_okay=False))
def keygen(key):
    """Write a new Ed25519 private key to KEY (mode 0600) and its public key to KEY.pub.

    Keep KEY with the publisher; give devices KEY.pub (`edgecl --public-key KEY.pub ...`,
    or env EDGECL_PUBLIC_KEY) so they accept only bundles and updates signed with KEY.
    """
    from edgecl_runtime import EdgeclRuntimeError, signing

    try:
        private, public = signing.generate_key(key)
        kid = signing.key_id(signing.load_public_key(public))
    except EdgeclRuntimeError as exc:
        fail(exc)
    click.echo(f"wrote {private} (private, keep it secret) and {public} (public); key id {kid}")


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--key", "key", required=True, type=click.Path(dir_okay=False),
              help="Ed25519 private key (PEM, from `edgecl keygen`).")
def sign(bundle, key):
    """Sign BUNDLE with KEY: fold its journal into a head snapshot, then sign the manifest.

    The signature covers every file (through the manifest's checksums) and every
    journal record (through the hash chain); a device with the public key refuses
    the bundle once anything in it changes, and any later update that is not
    signed by a key it trusts.
    """
    from edgecl_runtime import EdgeclRuntimeError, signing

    try:
        kid = signing.sign_bundle(bundle, key)
    except EdgeclRuntimeError as exc:
        fail(exc)
    click.echo(f"signed {bundle} with key {kid}")
