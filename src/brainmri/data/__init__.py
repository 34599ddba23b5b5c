"""brainmri.data."""
