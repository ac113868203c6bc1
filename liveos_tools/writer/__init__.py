"""liveos-iso-to-disk's engine: read a source, plan a stick, write it, verify it.

source.py   what is in the ISO / directory / device / running medium (no mounting for ISOs)
layout.py   which LiveOS layout it is, where its kernel, images and boot configs are
bootcfg.py  kernel arguments of the boot contract; syslinux and GRUB configs (pure)
target.py   what the target is, and the refusals made before anything is written
dest.py     writing files into the new filesystem: FAT through mtools, ext4 mounted
copy.py     streaming copy with checksum, progress and verification
stick.py    the plan for one target
"""
