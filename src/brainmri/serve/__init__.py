"""brainmri.serve."""
