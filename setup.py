"""Package metadata for medclr: contrastive pretraining + U-Net fine-tuning in JAX."""
import setuptools

setuptools.setup(
    name="medclr",
    version="0.1.0",
    description=(
        "Self-supervised contrastive pretraining on medical images and "
        "few-label U-Net fine-tuning, in JAX/Flax."
    ),
    packages=setuptools.find_packages(include=["medclr", "medclr.*"]),
    python_requires=">=3.11",
    # Lower bounds only: a newer Python (e.g. a TPU VM) resolves newer wheels.
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "grain>=0.2.18",
        "tensorflow-datasets>=4.9.10",
        "array-record>=0.8.1",
        "ml-collections>=1.1.0",
        "dm-pix>=0.4.5",
        "absl-py>=2.1",
        "numpy>=1.26",
        # 0.7.0 takes 1.3 s to import beside numpy 2.4 (its ufunc loops are
        # registered one by one, each compared with all before it: seen with
        # perf), and every process importing jax pays it; 0.6.0 takes 0.15 s.
        "ml-dtypes>=0.5.0,!=0.7.0",
        "pillow>=10.0",
        # FOV estimation (medclr.data.fov): morphology and labelling.
        "scipy>=1.11",
        # config.data.contrast='clahe' (medclr.data.preprocess).
        "scikit-image>=0.22",
        # TensorBoard event files without TensorFlow.
        "tensorboardX>=2.6",
        # 3D volumes (NIfTI, DICOM series) for the volume-aware methods.
        "nibabel>=5.0",
        "pydicom>=3.0",
        # Study report plots (medclr.study.plots).
        "matplotlib>=3.8",
    ],
    extras_require={
        # nilearn ships the MNI152 template used by the volume tests.
        "test": ["pytest>=8.0", "pytest-xdist>=3.5", "nbclient>=0.10",
                 "nbformat>=5.10", "ipykernel>=6.29", "matplotlib>=3.8",
                 "nilearn>=0.10", "hypothesis>=6.100"],
        "notebook": ["matplotlib>=3.8", "ipykernel>=6.29"],
        # The viewer for the runs' tb/ event files (`tensorboard --logdir
        # W/tb`; the launchers' last line names it). make install installs it.
        "tensorboard": ["tensorboard>=2.16"],
        # gcsfs: etils.epath's gs:// backend when TensorFlow is absent, for
        # gs://bucket/run workdirs (the bound is etils[epath-gcs]'s).
        "tpu": ["jax[tpu]>=0.10.2", "gcsfs>=2026.4.0"],
        # The PyTorch peer of benchmarks/ (make test installs it: the peer
        # tests are the independent check of the model and NT-Xent). Pinned
        # on purpose: torch 2.13.0 has a CPU wheel here, while an unpinned
        # torch pulls a multi-GB CUDA build.
        "bench": ["torch==2.13.0", "monai==1.6.1"],
    },
)
