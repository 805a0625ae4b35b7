"""Real-peer test support: Orthanc launcher, synthetic studies, fake PACS, XNAT emulator.

* :mod:`pacsman.testing.synthetic` -- deterministic synthetic studies (``DEMO_STUDIES``).
* :mod:`pacsman.testing.orthanc` -- a throw-away Debian Orthanc on free localhost ports.
* :mod:`pacsman.testing.dcmtk` -- DCMTK tools (``/usr/bin``) and a ``storescp`` launcher.
* :mod:`pacsman.testing.fakepacs` -- a pynetdicom Q/R SCP with switchable faults.
* :mod:`pacsman.testing.qrscp` -- pynetdicom's own Q/R SCP app (``qrscp``), a second PACS.
* :mod:`pacsman.testing.net` -- free ports and waiting on conditions with deadlines.
* :mod:`pacsman.testing.xnat_emulator` -- an XNAT that honours the project's REST contract.

Import the submodules directly; this package imports nothing, to stay cheap.
"""
