"""DICOM networking: associations and statuses, the command-set codec, the Storage SCP,
the fast paths, and hooks.py (every pynetdicom/pydicom internal pacsman touches)."""
