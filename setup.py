"""Build and install the DiffNR toolkit.

Compiled CPU kernels: every ``csrc`` folder under ``nr/`` becomes the extension
``<package>._C`` (C++17 + OpenMP, built with torch's extension machinery).
Install after torch, without build isolation, so that the extension is built
against the torch in the environment and no second torch is fetched:

    pip install torch==2.13.0
    pip install --no-build-isolation -e ".[test]"

``NR_EXTENSIONS=ops,fields`` builds only the named extensions (development).
"""

import os
from pathlib import Path

from setuptools import find_packages, setup

try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError as error:  # pragma: no cover - exercised only on a broken install
    raise SystemExit(
        "torch must be installed before this package is built: run `pip install torch==2.13.0` "
        "and then `pip install --no-build-isolation -e .` (or simply `make test`)."
    ) from error

ROOT = Path(__file__).parent


def kernel_extensions() -> list:
    only = {name for name in os.environ.get("NR_EXTENSIONS", "").split(",") if name}
    extensions = []
    for csrc in sorted(ROOT.glob("nr/**/csrc")):
        package = ".".join(csrc.parent.relative_to(ROOT).parts)
        if only and csrc.parent.name not in only:
            continue
        sources = sorted(str(path.relative_to(ROOT)) for path in csrc.glob("*.cpp"))
        if not sources:
            continue
        extensions.append(
            CppExtension(
                name=f"{package}._C",
                sources=sources,
                extra_compile_args=["-O3", "-fopenmp", "-std=c++17"],
                extra_link_args=["-fopenmp"],
            )
        )
    return extensions


setup(
    name="diffnr-toolkit",
    version="0.1.0",
    description="Sparse-view 3D CT reconstruction with neural representations and diffusion priors",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["nr*", "slicefixer*", "pipelines*", "data_curation*"]),
    package_data={"": ["csrc/*.cpp", "csrc/*.h", "splits.json"]},
    # torch: any release from 2.4 on; 2.13.0 (the CPU wheel on this machine's disk) satisfies it,
    # so an environment that already has a torch never pulls a second one.
    install_requires=[
        "torch>=2.4",
        "numpy>=1.24",
        "scipy>=1.10",
        "scikit-image>=0.22",
        "nibabel>=5.0",
        "SimpleITK>=2.3",
        "pydicom>=2.4",
        # Measured projections: Data Exchange / NeXus HDF5 and TIFF folders (nr/io/measured.py).
        "h5py>=3.8",
        "tifffile>=2023.1",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "safetensors>=0.4",
        "pytorch-msssim>=1.0",
        "diffusers>=0.30",
        "peft>=0.13",
        "transformers>=4.45",
        "accelerate>=0.34",
        "surface-distance>=0.1",
    ],
    extras_require={
        # itk-rtk: RTK, the independent CPU reference of tests/test_rtk.py (skipped without it).
        "test": ["pytest>=8", "pytest-xdist>=3", "ruff>=0.5", "itk-rtk>=2.7"],
        "bench": ["astra-toolbox>=2.1"],
        "cluster": ["dask[distributed]>=2024.1"],
        "logging": ["tensorboard>=2.14"],
        # LPIPS and CLIP need torchvision; PyPI's torchvision does not import beside the
        # torch 2.13.0 CPU wheel. Use them with `pip install torch==2.14.1 torchvision==0.29.1`.
        "perceptual": ["lpips>=0.1.4", "open_clip_torch>=2.24"],
    },
    ext_modules=kernel_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
