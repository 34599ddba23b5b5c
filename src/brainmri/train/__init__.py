"""brainmri.train."""
