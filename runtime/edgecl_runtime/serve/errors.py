"""The HTTP errors of ``edgecl serve``: each becomes a JSON ``{"error": message, "status": code}`` response."""

from __future__ import annotations

from flask import jsonify


class HTTPError(Exception):
    """A request the server refuses, with the HTTP status to answer (4xx) and a message for the user."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> HTTPError:
    return HTTPError(400, message)


def not_found(message: str) -> HTTPError:
    return HTTPError(404, message)


def conflict(message: str) -> HTTPError:
    return HTTPError(409, message)


def too_large(message: str) -> HTTPError:
    return HTTPError(413, message)


def unsupported(message: str) -> HTTPError:
    return HTTPError(415, message)


def error_response(status: int, message: str):
    """The JSON answer of a refused request: ``({"error": message, "status": status}, status)``."""
    return jsonify({"error": message, "status": status}), status

