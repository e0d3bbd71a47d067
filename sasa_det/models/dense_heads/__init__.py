"""mmdet registrations: dense_heads."""
