"""``pacsman serve``: the gateway service on a head node.

One process per head node (``serve.node_name``) holds the job store (also the queue:
:mod:`pacsman.jobstore.jobs`), one Storage SCP for every job, the scheduler
(:mod:`.scheduler`), the job threads (:mod:`.runner`, the same pipeline as the one-shot
command), the inbox (:mod:`.inbox`), the HTTP API and status page (:mod:`.http`), the
Prometheus metrics (:mod:`.metrics`), systemd's notify protocol (:mod:`.systemd`) and the
notifications when a job ends (:mod:`.notify`).  Jobs are submitted with ``pacsman
submit``, the inbox or the API; every way goes through :func:`.submit.queue_job`.
"""
