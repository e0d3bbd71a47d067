r"""Print the environment that builds mmcv's CUDA ops against this torch, as shell `export` lines.

    # what tools/setup_env.sh does before compiling mmcv (no GPU needed: the arch is named)
    eval "$(SASA_DET_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 .venv/bin/python tools/cuda_build_env.py)"

    # only say whether CUDA ops will be built, and why not (exit 0 either way)
    .venv/bin/python tools/cuda_build_env.py --explain

Whether to build (``SASA_DET_CUDA``): ``1`` builds CUDA ops (a GPU need not be visible), ``0``
never does, unset builds them when torch sees a GPU. For a build the script needs nvcc
(``CUDA_HOME`` or on PATH) and an arch list: ``TORCH_CUDA_ARCH_LIST`` as torch reads it
(``9.0``, ``8.0;9.0``, ``9.0+PTX``), else the visible GPU's compute capability.

Torch's CUDA headers include the CUDA libraries' headers (``ATen/cuda/CUDAContextLight.h``:
cuSPARSE, cuBLAS, cuBLASLt, cuSOLVER). A toolkit installed without those libraries lacks them,
but torch's own ``nvidia`` wheels (``site-packages/nvidia/cu13/include`` for CUDA 13) ship them:
their folders are appended to ``CPATH`` and ``LIBRARY_PATH``, after the toolkit's own, so the
toolkit's headers still win where both have one.

Exports: ``FORCE_CUDA``, ``CUDA_HOME``, ``TORCH_CUDA_ARCH_LIST``, ``CPATH``, ``LIBRARY_PATH``,
and ``SASA_DET_CUDA_TAG`` (for example ``cuda13.0-sm90``), which names the cached wheel. Without
a build it exports ``FORCE_CUDA=0`` and an empty tag; ``--explain`` prints the reason.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

# The CUDA library headers that torch's CUDA headers (and mmcv's ops) include.
LIBRARY_HEADERS = ('cusparse.h', 'cublas_v2.h', 'cublasLt.h', 'cusolverDn.h', 'curand.h',
                   'curand_kernel.h')
SWITCH_VALUES = ('1', '0', '')
_ARCH = re.compile(r'^(\d+)\.(\d+)(\+PTX)?$')


class CudaBuildError(RuntimeError):
    """Something a CUDA build needs is missing or malformed; the message says what."""


def wants_cuda(switch: Optional[str], gpu_visible: bool) -> bool:
    """Whether to build CUDA ops: ``SASA_DET_CUDA`` = '1' yes, '0' no, unset or '' if a GPU is seen."""
    switch = (switch or '').strip()
    if switch not in SWITCH_VALUES:
        raise CudaBuildError(f'SASA_DET_CUDA must be 1 (build CUDA ops), 0 (never) or unset '
                             f'(when torch sees a GPU), got {switch!r}')
    return switch == '1' or (switch == '' and gpu_visible)


def arch_list(requested: Optional[str], capability: Optional[tuple[int, int]]) -> list[str]:
    """The archs to compile: ``TORCH_CUDA_ARCH_LIST`` entries, else the visible GPU's capability."""
    if requested and requested.strip():
        entries = [e for e in re.split(r'[;\s]+', requested.strip()) if e]
        bad = [e for e in entries if not _ARCH.match(e)]
        if bad:
            raise CudaBuildError(f'TORCH_CUDA_ARCH_LIST entries must look like 9.0, 8.6 or '
                                 f'9.0+PTX, separated by ";" or spaces; got {bad} in '
                                 f'{requested!r}')
        return entries
    if capability is None:
        raise CudaBuildError('no GPU is visible to name the arch: set TORCH_CUDA_ARCH_LIST, e.g. '
                             '9.0 (H100/H200), 8.0 (A100), 8.6 (RTX 30xx) or "8.0;9.0"')
    return [f'{capability[0]}.{capability[1]}']


def cuda_tag(cuda_version: str, archs: Sequence[str]) -> str:
    """The cached wheel's name part, e.g. ``cuda13.0-sm80-sm90`` (``-sm90ptx`` for 9.0+PTX)."""
    parts = []
    for arch in archs:
        major, minor, ptx = _ARCH.match(arch).groups()
        parts.append(f'sm{major}{minor}{"ptx" if ptx else ""}')
    return '-'.join([f'cuda{cuda_version}', *parts])


def find_cuda_home(environ: Mapping[str, str]) -> Path:
    """The toolkit root: ``CUDA_HOME``/``CUDA_PATH``, else the folder above nvcc on PATH."""
    for name in ('CUDA_HOME', 'CUDA_PATH'):
        if environ.get(name):
            home = Path(environ[name])
            if not (home / 'bin' / 'nvcc').exists():
                raise CudaBuildError(f'{name}={home} has no bin/nvcc')
            return home
    nvcc = shutil.which('nvcc', path=environ.get('PATH'))
    if nvcc is None:
        raise CudaBuildError('nvcc (the CUDA compiler) is neither on PATH nor under CUDA_HOME: '
                             'install the CUDA toolkit matching torch.version.cuda')
    home = Path(nvcc).resolve().parent.parent
    # /usr/local/bin/nvcc may be a wrapper or link: prefer the toolkit it belongs to.
    for candidate in (home, Path('/usr/local/cuda')):
        if (candidate / 'include' / 'cuda_runtime.h').exists():
            return candidate
    raise CudaBuildError(f'found nvcc at {nvcc} but no include/cuda_runtime.h beside it: set '
                         f'CUDA_HOME to the toolkit root')


def wheel_include_dirs(site_packages: Sequence[Path]) -> list[Path]:
    """The ``include`` folders of the installed ``nvidia`` wheels (cu13 layout and older)."""
    found = []
    for root in site_packages:
        found += sorted(p for p in (root / 'nvidia').glob('*/include') if p.is_dir())
    return found


def extra_include_dirs(cuda_home: Path, candidates: Sequence[Path]) -> list[Path]:
    """The wheel folders that supply the library headers the toolkit lacks, in search order."""
    missing = [h for h in LIBRARY_HEADERS if not (cuda_home / 'include' / h).exists()]
    chosen: list[Path] = []
    unresolved = []
    for header in missing:
        source = next((d for d in candidates if (d / header).exists()), None)
        if source is None:
            unresolved.append(header)
        elif source not in chosen:
            chosen.append(source)
    if unresolved:
        raise CudaBuildError(f'{", ".join(unresolved)} found neither in {cuda_home}/include nor '
                             f'in torch\'s nvidia wheels: install the CUDA toolkit\'s libraries '
                             f'(cuSPARSE, cuBLAS, cuSOLVER, cuRAND) or reinstall torch with them')
    return chosen


def _joined(new: Sequence[Path], existing: Optional[str]) -> str:
    return os.pathsep.join([*filter(None, (existing or '').split(os.pathsep)), *map(str, new)])


def build_environment(environ: Mapping[str, str], gpu_capability: Optional[tuple[int, int]],
                      cuda_version: Optional[str], site_packages: Sequence[Path]) -> dict[str, str]:
    """The variables to export (FORCE_CUDA=0 and an empty tag when no CUDA build is wanted)."""
    if not wants_cuda(environ.get('SASA_DET_CUDA'), gpu_capability is not None):
        return dict(FORCE_CUDA='0', SASA_DET_CUDA_TAG='')
    if not cuda_version:
        raise CudaBuildError('this torch is a CPU-only build (torch.version.cuda is None): '
                             'install a CUDA build of torch to build CUDA ops')
    archs = arch_list(environ.get('TORCH_CUDA_ARCH_LIST'), gpu_capability)
    cuda_home = find_cuda_home(environ)
    extra = extra_include_dirs(cuda_home, wheel_include_dirs(site_packages))
    libraries = [d.parent / 'lib' for d in extra if (d.parent / 'lib').is_dir()]
    return dict(FORCE_CUDA='1', CUDA_HOME=str(cuda_home), TORCH_CUDA_ARCH_LIST=';'.join(archs),
                CPATH=_joined(extra, environ.get('CPATH')),
                LIBRARY_PATH=_joined(libraries, environ.get('LIBRARY_PATH')),
                SASA_DET_CUDA_TAG=cuda_tag(cuda_version, archs))


def _torch_facts() -> tuple[Optional[tuple[int, int]], Optional[str], list[Path]]:
    import site

    import torch
    capability = torch.cuda.get_device_capability(0) if torch.cuda.is_available() else None
    return capability, torch.version.cuda, [Path(p) for p in site.getsitepackages()]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--explain', action='store_true',
                        help='print in words what will be built and why, instead of exports')
    args = parser.parse_args(argv)
    capability, cuda_version, site_packages = _torch_facts()
    try:
        exports = build_environment(os.environ, capability, cuda_version, site_packages)
    except CudaBuildError as error:
        if args.explain:
            print(f'no CUDA ops: {error}')
            return 0
        print(f'cuda_build_env.py: {error}', file=sys.stderr)
        return 2
    if args.explain:
        if exports['FORCE_CUDA'] == '1':
            print(f'CUDA ops for {exports["TORCH_CUDA_ARCH_LIST"]} with the toolkit in '
                  f'{exports["CUDA_HOME"]}; headers added from: {exports["CPATH"] or "none"}')
        else:
            print('no CUDA ops: no GPU is visible to torch and SASA_DET_CUDA is not 1')
        return 0
    for name, value in exports.items():
        print(f'export {name}={shlex.quote(value)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
