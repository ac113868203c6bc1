"""remix: a customised stick into a new bootable ISO (issue 11): seclusion and ISO assembly."""
