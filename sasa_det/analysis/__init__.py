"""Model complexity: parameters, multiply-adds and FLOPs with attention counted exactly."""
