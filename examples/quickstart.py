"""The README's quick start from Python: train on an image folder, export, predict and add a class on the device.

Run from the repository's root after ``python examples/make_image_folder.py my_images new_images``.
"""

from edgecl.experiment import RunConfig, run_experiment
from edgecl.workflows import export_run
from edgecl_runtime import Bundle

cfg = RunConfig(dataset="my_images", learner="ranpac", init_cls=10, increment=5)
result = run_experiment(cfg, out_dir="runs/mine-py")        # logs its backbone choice and top-1 after each task
print(result.metrics.last, result.metrics.forgetting)        # last accuracy and forgetting, %
export_run("runs/mine-py", "bundles/mine-py")               # checks ONNX against torch

b = Bundle.load("bundles/mine-py")                          # the device side: numpy + onnxruntime, no torch
print(b.predict("my_images/red-star/000.png", top_k=3, unknown="auto").top_k)  # label None if unlike every class
b.add_class("yellow-circle", [f"new_images/yellow-circle/{i:03d}.png" for i in range(10)])
print(b.predict("new_images/yellow-circle/039.png").labels)  # ['yellow-circle']
