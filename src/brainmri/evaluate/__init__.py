"""brainmri.evaluate."""
