from setuptools import find_packages, setup

setup(
    name='sasa-det',
    version='0.1.0',
    description='Stand-Alone Self-Attention (Ramachandran et al., 2019) for MMDetection',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    packages=find_packages(include=['sasa_det', 'sasa_det.*']),
    # The fused CPU kernel is compiled from this source on first use.
    package_data={'sasa_det.ops': ['csrc/*.cpp', 'csrc/*.h']},
    install_requires=[
        'torch>=2.1',
        'mmengine==0.10.7',
        'mmcv==2.1.0',
        'mmdet==3.3.0',
        'pycocotools',
        'timm',
        'matplotlib',
    ],
    extras_require={'dev': ['pytest']},
    license='Apache-2.0',
)
