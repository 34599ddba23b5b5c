"""brainmri.bundle."""
