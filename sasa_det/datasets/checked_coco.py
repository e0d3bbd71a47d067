"""``CheckedCocoDataset``: mmdet's CocoDataset that validates its annotation file at load time
and names the image and annotation file when loading a sample fails.

Use it in a config in place of ``CocoDataset`` (same arguments, plus ``check_images`` and
``strict`` of :func:`~sasa_det.datasets.coco_checks.check_coco_annotations`)::

    train_dataloader = dict(dataset=dict(type='CheckedCocoDataset', ...))

The annotation file is parsed once: the check and mmdet's COCO index read the same dict (for
COCO train2017 the file is about 450 MB).
"""
import copy
import warnings

from mmdet.datasets import CocoDataset
from mmdet.datasets.api_wrappers import COCO
from mmdet.registry import DATASETS
from mmengine.fileio import get_local_path
from mmengine.logging import print_log

from .coco_checks import CHECK_IMAGES, check_coco_data, load_coco_json


class SampleLoadError(RuntimeError):
    """Loading one sample (image + annotations through the pipeline) failed."""


def coco_index(data: dict) -> COCO:
    """mmdet's COCO API object over an annotation dict that is already parsed."""
    coco = COCO()  # no file: an empty index
    coco.dataset = data
    coco.createIndex()
    # mmdet's COCO.__init__ sets these aliases after pycocotools' createIndex built the maps.
    coco.img_ann_map, coco.cat_img_map = coco.imgToAnns, coco.catToImgs
    return coco


@DATASETS.register_module()
class CheckedCocoDataset(CocoDataset):
    """CocoDataset with :func:`check_coco_data` run on the annotations before they are indexed.

    Args:
        check_images: 'exists' (default), 'decode' or 'none'; skipped for non-local storage
            (``backend_args`` set).
        strict: make the warnings (boxes mmdet ignores) errors.
        *args, **kwargs: :class:`mmdet.datasets.CocoDataset`'s.
    """

    def __init__(self, *args, check_images: str = 'exists', strict: bool = False, **kwargs):
        if check_images not in CHECK_IMAGES:
            raise ValueError(f'check_images must be one of {CHECK_IMAGES}, got {check_images!r}')
        # Set before super().__init__, which loads the annotations (full_init).
        self.check_images, self.strict = check_images, strict
        super().__init__(*args, **kwargs)

    def load_data_list(self):
        """mmdet's ``CocoDataset.load_data_list``, on the checked annotations parsed once."""
        self.coco = coco_index(self._load_checked_annotations())
        # The order of cat_ids does not follow the order of the classes (as in mmdet).
        self.cat_ids = self.coco.get_cat_ids(cat_names=self.metainfo['classes'])
        self.cat2label = {cat_id: i for i, cat_id in enumerate(self.cat_ids)}
        self.cat_img_map = copy.deepcopy(self.coco.cat_img_map)
        data_list = []
        for img_id in self.coco.get_img_ids():
            raw_img_info = dict(self.coco.load_imgs([img_id])[0], img_id=img_id)
            raw_ann_info = self.coco.load_anns(self.coco.get_ann_ids(img_ids=[img_id]))
            data_list.append(self.parse_data_info(
                dict(raw_ann_info=raw_ann_info, raw_img_info=raw_img_info)))
        # Unique annotation ids (mmdet's ANN_ID_UNIQUE assertion) are part of the check.
        del self.coco
        return data_list

    def _load_checked_annotations(self) -> dict:
        """The parsed annotation file, after :func:`check_coco_data`; warnings are logged."""
        with get_local_path(self.ann_file, backend_args=self.backend_args) as local_path:
            data = load_coco_json(local_path)
        img_prefix = None if self.backend_args else self.data_prefix.get('img', '')
        with warnings.catch_warnings(record=True):  # logged below instead
            warns = check_coco_data(data, self.ann_file, img_prefix=img_prefix,
                                    check_images=self.check_images, strict=self.strict,
                                    require_annotations=not self.test_mode)
        for message in warns:
            print_log(message, logger='current', level=30)  # logging.WARNING
        return data

    def prepare_data(self, idx):
        try:
            return super().prepare_data(idx)
        except Exception as err:
            info = self.get_data_info(idx)
            raise SampleLoadError(
                f'{self.ann_file}: loading image {info.get("img_path")} (image id '
                f'{info.get("img_id")}, dataset index {idx}) failed: {type(err).__name__}: '
                f'{err}') from err
