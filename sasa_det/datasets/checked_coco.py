"""``CheckedCocoDataset``: mmdet's CocoDataset that validates its annotation file at load time
and names the image and annotation file when loading a sample fails.

Use it in a config in place of ``CocoDataset`` (same arguments, plus ``check_images`` and
``strict`` of :func:`~sasa_det.reliability.coco_checks.check_coco_annotations`)::

    train_dataloader = dict(dataset=dict(type='CheckedCocoDataset', ...))
"""
import warnings

from mmdet.datasets import CocoDataset
from mmdet.registry import DATASETS
from mmengine.fileio import get_local_path
from mmengine.logging import print_log

from .coco_checks import check_coco_annotations


class SampleLoadError(RuntimeError):
    """Loading one sample (image + annotations through the pipeline) failed."""


@DATASETS.register_module()
class CheckedCocoDataset(CocoDataset):
    """CocoDataset with :func:`check_coco_annotations` run before the annotations are parsed.

    Args:
        check_images: 'exists' (default), 'decode' or 'none'; skipped for non-local storage
            (``backend_args`` set).
        strict: make the warnings (boxes mmdet ignores) errors.
        *args, **kwargs: :class:`mmdet.datasets.CocoDataset`'s.
    """

    def __init__(self, *args, check_images: str = 'exists', strict: bool = False, **kwargs):
        # Set before super().__init__, which loads the annotations (full_init).
        self.check_images, self.strict = check_images, strict
        super().__init__(*args, **kwargs)

    def load_data_list(self):
        img_prefix = None if self.backend_args else self.data_prefix.get('img', '')
        with get_local_path(self.ann_file, backend_args=self.backend_args) as local_path:
            with warnings.catch_warnings(record=True):  # logged below instead
                warns = check_coco_annotations(
                    local_path, img_prefix=img_prefix, check_images=self.check_images,
                    strict=self.strict, require_annotations=not self.test_mode)
        for message in warns:
            print_log(message, logger='current', level=30)  # logging.WARNING
        return super().load_data_list()

    def prepare_data(self, idx):
        try:
            return super().prepare_data(idx)
        except Exception as err:
            info = self.get_data_info(idx)
            raise SampleLoadError(
                f'{self.ann_file}: loading image {info.get("img_path")} (image id '
                f'{info.get("img_id")}, dataset index {idx}) failed: {type(err).__name__}: '
                f'{err}') from err
