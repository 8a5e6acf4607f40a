"""Workarounds for seven bugs of snakemake-executor-plugin-slurm 2.8.0, as this workflow meets them on a
real cluster. `work_around_plugin_bugs()` applies them to the plugin of this process; the workflow calls
it (workflow/rules/common.smk). Each is checked on the local cluster (tests/test_slurm.py) and, where it
can be, in-process against the plugin's own code.

1. **"CANCELLED by <uid>"**: sacct writes a job cancelled by someone (scancel, an admin, a preemption
   that cancels) so. The plugin compares states with its list of failed states exactly, so it takes
   such a job for one still running and waits for it forever instead of failing it and letting
   Snakemake resubmit it, whose run then resumes from its checkpoint. (The old cookiecutter profile
   had the same bug: Snakemake-Profiles/slurm#22.)
2. **Failed nodes excluded for good**: after a job ends NODE_FAIL the plugin excludes the job's node
   from every later submission, reading it from `sacct -o nodelist` whenever its poll sees the state.
   With requeue (the site profile's default) SLURM has meanwhile put the same job back in its queue,
   for any node, and what the poll reads depends on the moment: the node's name, or "None assigned"
   once the job is requeued. "None assigned" makes every later sbatch fail ("Invalid node name
   specified"); the node's name, on a partition whose nodes have each failed once, leaves no node for
   any later job although SLURM has them back in service. So with requeue node health is SLURM's to
   judge: later jobs exclude only the nodes the user named (`slurm-exclude-failed-nodes`). Without
   requeue the plugin's exclusion of the node for the retry is its documented behaviour: kept, less
   "None assigned".
3. **Job arrays beside groups, under a job cap** (the plugin's open #473, and a crash): `run_jobs`
   counts the DAG's ready jobs by `job.rule`, which a group job (a run's grouped evaluations) lacks:
   `AttributeError: 'GroupJob' object has no attribute 'rule'` ends the run as soon as a group is ready
   while an array rule has jobs. Past that, when Snakemake hands it fewer jobs of an array rule than
   are ready (because `--jobs` caps them), it skips them, "waiting for more jobs". But a job handed to
   an executor holds its `--jobs` slot and is never handed over again: skipped jobs are never
   submitted, and once they hold every slot the run hangs ("Selected jobs: 0"). The reference study's
   112 distillation jobs under a site cap of 100 are that case. Here every job handed over is
   submitted at once: a rule's array-selected jobs as one array, one plain job when alone.
4. **An array takes its first task's limits**: the plugin builds one sbatch call for an array from its
   first job's resources. A retried job (attempt 2: twice the time limit) handed over beside jobs of a
   first attempt would run under the first attempt's limit, or they under its. Here an array only ever
   holds jobs whose resources (time limit, memory, GPUs, threads, extra sbatch options) are equal;
   jobs that differ go out as separate arrays.
5. **Arrays too long for one argument**: the plugin passes an array's tasks to sbatch inside one
   `--wrap` argument (each task's command, compressed). Linux caps one argument at 128 KiB
   (MAX_ARG_STRLEN), which the reference study's ~100 distill tasks pass. The plugin then falls back to
   a batch script that puts `--slurm-jobstep-array-execs` on a line of its own, a shell command of its
   own: every task runs the first task's job, "completes", and the others' outputs never appear
   (Snakemake waits `latency-wait` for each, then retries them). Here an array's tasks are split so
   that each sbatch call stays far below the cap (`ARRAY_PAYLOAD_BYTES`).
6. **One failed sacct call ends the study** (the plugin's open #331): when the status command fails
   (sacct's "Connection refused" while slurmdbd restarts), the plugin asks again at once, 5 times in
   under a second (`--slurm-status-attempts`), then drops every job it was watching: they are neither
   finished nor failed nor watched, and Snakemake waits for them forever. Here a failed status query
   means "no news": the jobs stay watched, a warning names the failure, and the next poll asks again
   (10 s later, growing to every 180 s as the plugin's polls do). Only when no query has answered for
   STATUS_PATIENCE_SECONDS does the run stop, with a sentence: the jobs go on in SLURM, and the same
   command, once sacct answers, finds what they finished.
7. **A requeued job read as failed**: after a node failure SLURM requeues the job (same job id) and runs
   it again, but sacct can go on answering the failed run's state (FAILED) for a while after the job
   runs again. The plugin takes that answer: it cancels the running job and Snakemake resubmits it
   under a new id, which resumes from the checkpoint a second time. Here a job sacct calls failed is
   asked of slurmctld too (`squeue`), and where slurmctld has it queued or running, that is its state.

Nothing here imports torch or snakemake at module level: the status view imports kdsweep.slurm, and
the Snakefile this module, in every snakemake process.
"""

from __future__ import annotations

import shlex
import time
import zlib

# Bug 5: the most bytes of task commands (compressed, as the plugin encodes them) one array's sbatch call
# carries: well below Linux's 128 KiB for one argument, with room for the rest of the call.
ARRAY_PAYLOAD_BYTES = 64 * 1024
# Bug 6: how long the status command may fail without one answer before the run stops.
STATUS_PATIENCE_SECONDS = 3600
# sacct's answer on a cluster without accounting: no retry changes it
_PERMANENT = "accounting storage is disabled"

_CANCELLED_BY = "CANCELLED by "
# Bug 7: the states sacct can report for a job that slurmctld has running again, and the states in which
# slurmctld has a job queued or running (not COMPLETING: a job that ends there failed for good).
_FAILED = ("FAILED", "NODE_FAIL", "BOOT_FAIL")
_ALIVE = ("PENDING", "CONFIGURING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED")


def job_state(state: str) -> str:
    """A job state as the plugin's lists spell it: "CANCELLED by 1000" is "CANCELLED"."""
    return "CANCELLED" if state.startswith(_CANCELLED_BY) else state


def node_names(nodes) -> set:
    """The entries of the plugin's failed-node set that are node lists SLURM accepts: not sacct's
    "None assigned" (or anything else with a space, which no node name has)."""
    return {node for node in nodes if node and not any(c.isspace() for c in node)}


def excluded_nodes(failed_nodes, settings) -> set:
    """The nodes a submission excludes, from the plugin's failed-node set and its executor settings:
    with requeue only the nodes the user named (`exclude_failed_nodes`), else the failed ones too."""
    named = {node.strip() for node in (getattr(settings, "exclude_failed_nodes", None) or "").split(",")}
    if getattr(settings, "requeue", False):
        return node_names(named)
    return node_names(set(failed_nodes or ()) | named)


def submission_key(job) -> tuple:
    """What of a job reaches its sbatch call: its resources (time limit, memory, GPUs, partition, extra
    options, ...) and threads. Jobs share an array only where these are equal (bug 4)."""
    resources = tuple(sorted((name, str(value)) for name, value in job.resources.items()))
    return resources, str(job.threads)


def encoded_size(command: str) -> int:
    """Bytes a task's command takes in the plugin's array payload: zlib-compressed, hex, in base64'd JSON."""
    return len(zlib.compress(command.encode("utf-8"), level=9).hex()) * 4 // 3 + 16


def payload_chunks(jobs, command_of, limit: int = ARRAY_PAYLOAD_BYTES) -> list[list]:
    """Consecutive chunks of an array's jobs whose commands, encoded, stay within `limit` bytes (bug 5);
    every job in exactly one chunk, a chunk never empty."""
    chunks, size = [[]], 0
    for job in jobs:
        cost = encoded_size(command_of(job))
        if chunks[-1] and size + cost > limit:
            chunks.append([])
            size = 0
        chunks[-1].append(job)
        size += cost
    return chunks


def submissions(jobs, array_rules) -> list[list]:
    """The sbatch calls for the jobs an executor is handed, each a list of jobs: an array where it holds
    two or more. Group jobs go out alone; jobs of a rule in array_rules (a set of rule names, "all"
    for every rule) as one array per distinct submission_key, in the order they came; the rest alone.
    Every job is in exactly one call (bug 3)."""
    calls, arrays = [], {}
    for job in jobs:
        if job.is_group():
            calls.append([job])
            continue
        rule = job.rule.name
        if "all" in array_rules or rule in array_rules:
            key = (rule, submission_key(job))
            if key not in arrays:
                arrays[key] = []
                calls.append(arrays[key])
            arrays[key].append(job)
        else:
            calls.append([job])
    return calls


class StatusQueries:
    """Bug 6: the status command's failures, turned into "no news" until STATUS_PATIENCE_SECONDS
    without one answer have passed. One per process (the plugin's status query is a module function)."""

    def __init__(self, patience: float = STATUS_PATIENCE_SECONDS, clock=time.monotonic):
        self.patience, self.clock = patience, clock
        self.failing_since = None
        self.failures = 0

    async def query(self, query, command, logger):
        """The plugin's query_job_status(command, logger), with bug 1's states mapped, and a failure
        returned as an empty answer (every watched job stays watched) or, past the patience, raised."""
        errors = []

        class _Recorder:
            """The plugin logs a failed command's stderr at debug level only: keep it for the warning."""

            def __getattr__(self, name):
                return getattr(logger, name)

            def debug(self, message, *args, **kwargs):
                errors.append(str(message))
                return logger.debug(message, *args, **kwargs)

        states, duration = await query(command, _Recorder())
        if states is not None:
            self.failing_since, self.failures = None, 0
            states = {job: job_state(state) for job, state in states.items()}
            failed = [job for job, state in states.items() if state in _FAILED]
            if failed and command.split()[0].endswith("sacct"):  # bug 7: slurmctld's states, by raw id as sacct's
                ask = ["squeue", "--noheader", "--format=%A|%T", "--jobs", ",".join(failed)]
                queued = (await query(shlex.join(ask), logger))[0] or {}
                states.update({job: queued[job] for job in failed if queued.get(job) in _ALIVE})
            return states, duration
        reason_now = errors[-1] if errors else ""
        if _PERMANENT in reason_now:
            from snakemake_interface_common.exceptions import WorkflowError

            raise WorkflowError(f"the SLURM status command says {reason_now.split('failed:', 1)[-1].strip()!r}, "
                                "which no retry changes: add `--slurm-status-command squeue` (or "
                                "`slurm-status-command: squeue` to the site profile) and run again")
        now = self.clock()
        if self.failing_since is None:
            self.failing_since = now
        self.failures += 1
        # (the plugin's message: "SLURM query command failed: <stderr>")
        reason = errors[-1].split("failed:", 1)[-1].strip() if errors else "no output"
        waited = now - self.failing_since
        if waited >= self.patience:
            from snakemake_interface_common.exceptions import WorkflowError

            raise WorkflowError(
                f"the SLURM status command has failed for {waited / 60:.0f} minutes ({self.failures} calls; "
                f"last: {reason}); the study's jobs go on in SLURM: once `{command.split()[0]}` answers again, "
                "run `snakemake --unlock` and the same snakemake command, which picks up what they finished")
        logger.warning(f"the SLURM status command failed ({reason}): {self.failures} failed call(s) in {waited:.0f} s "
                       "so far; every job stays watched and the next poll asks again (the run stops after "
                       f"{self.patience / 60:.0f} minutes without an answer)")
        return {}, 0.0


def plugin_version() -> str | None:
    """The installed snakemake-executor-plugin-slurm's version, or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("snakemake-executor-plugin-slurm")
    except PackageNotFoundError:
        return None


def work_around_plugin_bugs() -> bool:
    """Apply the workarounds above to the slurm executor plugin of this process: wrap its status query
    (bugs 1, 6 and 7) and its submit command (bug 2), and replace its executor's run_jobs (bugs 3, 4 and 5).
    Does nothing where the plugin is not installed, and nothing twice. Returns whether all are in place;
    False (with nothing changed) where the plugin lacks what they wrap (another version than 2.8)."""
    try:
        import snakemake_executor_plugin_slurm as plugin
    except ImportError:
        return False
    query, submit = getattr(plugin, "query_job_status", None), getattr(plugin, "get_submit_command", None)
    executor = getattr(plugin, "Executor", None)
    needed = ("run_jobs", "_submit_job", "_submit_array_jobs", "format_job_exec")
    if query is None or submit is None or executor is None or not all(hasattr(executor, n) for n in needed):
        return False
    if getattr(query, "kdsweep_wrapped", False):
        return True
    statuses = StatusQueries()

    async def query_job_status(command, logger):
        return await statuses.query(query, command, logger)

    def get_submit_command(job, params, settings=None, failed_nodes=None, **kwargs):
        return submit(job, params, settings=settings, failed_nodes=excluded_nodes(failed_nodes, settings),
                      **kwargs)

    run_jobs = executor.run_jobs

    def submit_every_job(self, jobs):
        """Executor.run_jobs: every job handed over goes out now (bugs 3 and 4), an array in calls that
        each fit one argument (bug 5)."""
        run_jobs(self, [])  # the plugin's own set-up of a call (its event loop), with nothing to submit
        for call in submissions(jobs, self.array_jobs):
            for chunk in payload_chunks(call, self.format_job_exec) if len(call) > 1 else [call]:
                if len(chunk) > 1:
                    self._submit_array_jobs(chunk)
                else:
                    self._submit_job(chunk[0])

    query_job_status.kdsweep_wrapped = get_submit_command.kdsweep_wrapped = True
    plugin.query_job_status, plugin.get_submit_command = query_job_status, get_submit_command
    if not getattr(run_jobs, "kdsweep_wrapped", False):
        submit_every_job.kdsweep_wrapped = True
        executor.run_jobs = submit_every_job
    return True
