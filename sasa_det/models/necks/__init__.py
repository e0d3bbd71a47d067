"""mmdet registrations: necks."""
