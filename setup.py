from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="capsrobust",
    version="0.1.0",
    description="Adversarial robustness of capsule networks against CNNs: train, attack with ART, detect, compare.",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["capsrobust", "capsrobust.*", "attacks", "attacks.*"]),
    package_data={"capsrobust.data": ["subset/*/*.gz", "subset/SOURCE.md", "subset/SHA256SUMS"],
                  "capsrobust": ["zoo/*/card.json", "zoo/*/model.weights.h5"]},
    install_requires=[
        "tensorflow>=2.18,<2.22",
        "keras>=3.8,<4",
        "tensorboard>=2.18",
        "adversarial-robustness-toolbox>=1.18,<2",
        "numpy>=1.26,<3",
        "scipy>=1.11",
        "rich>=13",
        "matplotlib>=3.8",
        "h5py>=3.10",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-benchmark>=4", "pytest-xdist>=3", "hypothesis>=6"],
        # The other Keras backends (one process runs one, chosen by KERAS_BACKEND); GPU builds per their own docs.
        "jax": ["jax>=0.4.34"],
        "torch": ["torch>=2.3"],
    },
    entry_points={"console_scripts": ["capsrobust=capsrobust.cli:entry_point"]},
)
