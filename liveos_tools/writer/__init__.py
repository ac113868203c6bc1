"""liveos-iso-to-disk's engine: read a source, decide a stick, write it, check it.

source.py     what is in the ISO / directory / device / running medium (no mounting for ISOs)
layout.py     which LiveOS layout it is, where its kernel, images and boot configs are
bootcfg.py    kernel arguments of the boot contract; syslinux and GRUB configs (pure)
target.py     what the target is, and the refusals made before anything is written
options.py    WriteOptions and the records the modules share (StickFs, OverlaySpec, HomeSpec)
existing.py   an existing stick filesystem read unmounted; a source stick's overlay/home.img
partition.py  --format's partitions: exact sectors, alignment, the kernel's nodes
spec.py       the decision step: a frozen StickSpec (persistence, sizes, fs, table, boot)
space.py      the space check of a spec (FAT limit, capacity, free space in write order)
steps.py      the step builder: the Plan, its state in one StickRun
files.py      disk boot code/flags, hidden sectors, relabel, overlay image/home/swap files
dest.py       writing files into the new filesystem: FAT through mtools, ext mounted
fatwrite.py   the fast FAT writer: a file's clusters allocated and written directly
copy.py       streaming copy with checksum, progress and verification
bootsector.py the VBR as the BIOS chain uses it (hidden sectors, ldlinux.sys pointer)
checkstick.py the stick checked as firmware and dracut see it, after writing
stick.py      plan_stick() = decide + space check + build; execute()
"""
