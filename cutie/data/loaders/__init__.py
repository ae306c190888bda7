"""Training loaders: batches of rendered clips on the device (torch workers or DALI), resumable."""
