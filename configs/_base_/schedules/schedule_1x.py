# mmdet's standard 1x: 12 epochs, SGD lr 0.02 for batch 16, linear warm-up 500 iterations,
# x0.1 at epochs 8 and 11.
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'
