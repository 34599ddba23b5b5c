"""brainmri.infer."""
