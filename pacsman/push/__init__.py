"""Push de-identified sessions to XNAT (or a DICOM SCP, or a folder), gently, exactly once.

Typical use, by the pipeline::

    uploads = [SessionUpload(project, subject, session, directory, study_uid, n, per_scan)]
    with open_target(config, kind="xnat") as target:
        outcomes = push_all(
            uploads,
            target,
            max_concurrent=config.push.max_concurrent,
            interval=config.push.interval,
            retry=retry_policy(config.push),
            on_done=record_in_job_store,
        )

An outcome is DONE only once the target holds every file.  See ``docs/push.md``.
"""

from pacsman.push.credentials import Credentials, resolve_credentials
from pacsman.push.models import LabelProblem, PushOutcome, SessionUpload, Target
from pacsman.push.queue import push_all, retry_policy
from pacsman.push.targets import TargetKind, check_anonymization, open_target

__all__ = [
    "Credentials",
    "LabelProblem",
    "PushOutcome",
    "SessionUpload",
    "Target",
    "TargetKind",
    "check_anonymization",
    "open_target",
    "push_all",
    "resolve_credentials",
    "retry_policy",
]
