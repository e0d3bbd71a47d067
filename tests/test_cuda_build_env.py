"""tools/cuda_build_env.py: the switch, the arch list, the wheel's name, and that the header
folders it adds make torch's CUDA headers compile with nvcc (skipped only where nvcc is absent)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tools'))
import cuda_build_env as cbe  # noqa: E402


@pytest.mark.parametrize('switch, gpu, expected', [
    ('1', False, True), ('1', True, True), ('0', True, False), ('0', False, False),
    (None, True, True), (None, False, False), ('', True, True), (' 1 ', False, True)])
def test_switch_builds_cuda_when_asked_or_when_a_gpu_is_seen(switch, gpu, expected):
    assert cbe.wants_cuda(switch, gpu) is expected


@pytest.mark.parametrize('switch', ['yes', 'true', '2', 'cuda'])
def test_unknown_switch_value_is_named_with_the_allowed_ones(switch):
    with pytest.raises(cbe.CudaBuildError, match=rf"must be 1 .*0 .*unset.*got '{switch}'"):
        cbe.wants_cuda(switch, True)


def test_arch_list_prefers_the_request_and_otherwise_takes_the_visible_gpu():
    assert cbe.arch_list('8.0;9.0+PTX', (7, 5)) == ['8.0', '9.0+PTX']
    assert cbe.arch_list('8.6 9.0', None) == ['8.6', '9.0']
    assert cbe.arch_list(None, (9, 0)) == ['9.0']
    assert cbe.arch_list('  ', (8, 9)) == ['8.9']


def test_arch_list_without_a_gpu_or_with_a_malformed_entry_says_what_to_set():
    with pytest.raises(cbe.CudaBuildError, match='set TORCH_CUDA_ARCH_LIST, e.g. 9.0'):
        cbe.arch_list(None, None)
    with pytest.raises(cbe.CudaBuildError, match=r"\['sm_90'\]"):
        cbe.arch_list('8.0;sm_90', None)


def test_cached_wheel_tag_names_cuda_version_and_every_arch():
    assert cbe.cuda_tag('13.0', ['9.0']) == 'cuda13.0-sm90'
    assert cbe.cuda_tag('12.8', ['8.0', '9.0+PTX']) == 'cuda12.8-sm80-sm90ptx'


def _toolkit(tmp_path, headers):
    home = tmp_path / 'cuda'
    (home / 'bin').mkdir(parents=True)
    (home / 'bin' / 'nvcc').write_text('')
    (home / 'include').mkdir()
    for header in ('cuda_runtime.h', *headers):
        (home / 'include' / header).write_text('')
    return home


def _wheel(site, package, headers):
    include = site / 'nvidia' / package / 'include'
    include.mkdir(parents=True)
    (include.parent / 'lib').mkdir()
    for header in headers:
        (include / header).write_text('')
    return include


def test_only_headers_the_toolkit_lacks_pull_in_wheel_folders_after_the_existing_cpath(tmp_path):
    home = _toolkit(tmp_path, [h for h in cbe.LIBRARY_HEADERS if h != 'cusparse.h'])
    site = tmp_path / 'site'
    cu13 = _wheel(site, 'cu13', ['cusparse.h', 'cublas_v2.h'])
    _wheel(site, 'cudnn', ['cudnn.h'])
    env = dict(SASA_DET_CUDA='1', TORCH_CUDA_ARCH_LIST='9.0', CUDA_HOME=str(home),
               CPATH='/opt/mine')
    exports = cbe.build_environment(env, None, '13.0', [site])
    assert exports['CPATH'] == os.pathsep.join(['/opt/mine', str(cu13)])
    assert exports['LIBRARY_PATH'] == str(cu13.parent / 'lib')
    assert exports['SASA_DET_CUDA_TAG'] == 'cuda13.0-sm90'
    assert exports['FORCE_CUDA'] == '1' and exports['CUDA_HOME'] == str(home)

    complete = _toolkit(tmp_path / 'full', cbe.LIBRARY_HEADERS)
    exports = cbe.build_environment(dict(env, CUDA_HOME=str(complete), CPATH=''), None, '13.0',
                                    [site])
    assert exports['CPATH'] == '' and exports['LIBRARY_PATH'] == ''


def test_header_missing_everywhere_is_named(tmp_path):
    home = _toolkit(tmp_path, [])
    site = tmp_path / 'site'
    _wheel(site, 'cu13', [h for h in cbe.LIBRARY_HEADERS if h != 'cusolverDn.h'])
    env = dict(SASA_DET_CUDA='1', TORCH_CUDA_ARCH_LIST='9.0', CUDA_HOME=str(home))
    with pytest.raises(cbe.CudaBuildError, match='cusolverDn.h found neither in'):
        cbe.build_environment(env, None, '13.0', [site])


def test_no_build_wanted_or_cpu_torch_or_no_nvcc_is_reported(tmp_path):
    assert cbe.build_environment({}, None, '13.0', []) == dict(FORCE_CUDA='0',
                                                               SASA_DET_CUDA_TAG='')
    with pytest.raises(cbe.CudaBuildError, match='CPU-only build'):
        cbe.build_environment(dict(SASA_DET_CUDA='1'), None, None, [])
    with pytest.raises(cbe.CudaBuildError, match='nvcc'):
        cbe.find_cuda_home(dict(PATH=str(tmp_path)))
    with pytest.raises(cbe.CudaBuildError, match='has no bin/nvcc'):
        cbe.find_cuda_home(dict(CUDA_HOME=str(tmp_path)))


KERNEL = r'''
#include <ATen/cuda/CUDAContextLight.h>
__global__ void add_one(float *x) { x[threadIdx.x] += 1.f; }
'''


@pytest.mark.skipif(shutil.which('nvcc') is None, reason='nvcc (the CUDA compiler) is absent')
@pytest.mark.skipif(torch.version.cuda is None, reason='CPU-only torch has no CUDA headers')
def test_torch_cuda_headers_compile_with_nvcc_given_the_printed_environment(tmp_path):
    """The property the mmcv build depends on: with the exported CUDA_HOME/CPATH, nvcc compiles a
    kernel including ATen/cuda/CUDAContextLight.h (which needs cuSPARSE, cuBLAS, cuSOLVER)."""
    env = dict(os.environ, SASA_DET_CUDA='1', TORCH_CUDA_ARCH_LIST='9.0')
    _, cuda_version, site_packages = cbe._torch_facts()
    exports = cbe.build_environment(env, None, cuda_version, site_packages)
    source = tmp_path / 'kernel.cu'
    source.write_text(KERNEL)
    include = Path(torch.__file__).parent / 'include'
    command = [str(Path(exports['CUDA_HOME']) / 'bin' / 'nvcc'), '-std=c++20', '-arch=sm_90',
               '-c', str(source), '-o', str(tmp_path / 'kernel.o'), f'-I{include}',
               f'-I{include / "torch/csrc/api/include"}']
    result = subprocess.run(command, env=dict(env, CPATH=exports['CPATH']), capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    if exports['CPATH']:  # the folders were needed: without them the same compile stops
        bare = subprocess.run(command, env=dict(env, CPATH=''), capture_output=True, text=True)
        assert bare.returncode != 0 and '.h: No such file' in bare.stderr
