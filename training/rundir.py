"""
The run's folder (out_dir): its files, named here only (RunDir.checkpoint, .metrics, .lock); one process trains
in it at a time, and a new run never replaces an old one.

Before anything is written, the master process claims the folder: an exclusive lock on its lock file
(fcntl.flock: the kernel drops it when the process ends, however it ends, so it never goes stale), then a
check that a run from scratch is not about to replace a run already there. A run with a checkpoint is only
replaced with overwrite=True, its files moved into out_dir/overwritten-<date-time>/; the files of a run that
never saved a checkpoint (killed early) are moved into out_dir/unfinished-<date-time>/, so the same command
starts afresh. Nothing is deleted but the unfinished checkpoint files a killed process left. A start that
fails after the claim removes the folders the claim created.
"""

import errno
import fcntl
import glob
import os
import time

CHECKPOINT, METRICS, LOCK = "ckpt.pt", "metrics.jsonl", "train.lock"
RUN_FILES = (CHECKPOINT, METRICS)


class RunDirError(Exception):
    pass


class RunDir:
    """A run's folder, as every process and tool names its files; `claim` is the master process's."""

    def __init__(self, path):
        self.path = path
        self.checkpoint = os.path.join(path, CHECKPOINT)
        self.metrics = os.path.join(path, METRICS)
        self.lock_path = os.path.join(path, LOCK)
        self.created = []  # the folders the claim made, outermost first
        self.lock = None

    def claim(self, init_from, overwrite):
        """Lock the folder for this process, clear what a killed process left, and settle how the run starts.
        Returns (init_from, notes): 'scratch', 'resume' or a checkpoint's path ('auto' resolved: 'resume' when
        there is a checkpoint; a checkpoint that was moved aside followed to its new place), and one-line notes
        on what was done to the folder."""
        try:
            self._make_folders()
            self.lock = open(self.lock_path, "a+")
        except OSError as e:
            self.abandon()
            raise RunDirError(f"cannot write to out_dir {self.path} ({e.filename}: {e.strerror}); choose a "
                              f"folder you can write to with --out_dir") from None
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.lock.seek(0)
            owner = self.lock.read().strip() or "?"
            self.lock.close()
            raise RunDirError(f"another process (pid {owner}) is training in {self.path}; wait for it to end "
                              f"or choose another --out_dir") from None
        self.lock.truncate(0)
        self.lock.write(f"{os.getpid()}\n")
        self.lock.flush()
        notes = []
        unfinished = glob.glob(glob.escape(self.checkpoint) + ".tmp*")  # the lock says no process writes them now
        for path in unfinished:
            os.remove(path)
        if unfinished:
            notes.append(f"removed {len(unfinished)} unfinished checkpoint file(s) that a killed process left in "
                         f"{self.path} ({', '.join(os.path.basename(p) for p in unfinished)})")
        if init_from == "auto":
            init_from = "resume" if os.path.exists(self.checkpoint) else "scratch"
        existing = [name for name in RUN_FILES if os.path.exists(os.path.join(self.path, name))]
        if init_from == "resume" or not existing:
            return init_from, notes
        # a new run (from scratch or from a checkpoint's weights) where a run's files are
        saved = CHECKPOINT in existing
        if saved and not overwrite:
            self.lock.close()
            raise RunDirError(f"{self.path} already holds a run ({', '.join(existing)}): continue it with "
                              f"--init_from=resume (or auto), choose another --out_dir, or pass --overwrite=True "
                              f"to move its files into {self.path}/overwritten-<date-time>/")
        target = self._move_aside(existing, "overwritten" if saved else "unfinished")
        notes.append(f"overwrite=True: moved the run that was in {self.path} to {target}" if saved else
                     f"{self.path} held a run that never saved a checkpoint: moved its files to {target} and "
                     f"starting afresh")
        moved = os.path.join(target, CHECKPOINT)
        if init_from not in ("scratch", "resume") and os.path.abspath(init_from) == os.path.abspath(self.checkpoint):
            init_from = moved  # fine-tuning from the checkpoint that was just moved aside
        return init_from, notes

    def _make_folders(self):
        missing, folder = [], os.path.abspath(self.path)
        while not os.path.isdir(folder):
            if os.path.exists(folder):  # a file on the way
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), folder)
            missing.append(folder)
            folder = os.path.dirname(folder)
        for folder in reversed(missing):
            os.mkdir(folder)
            self.created.append(folder)

    def _move_aside(self, names, why):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target, n = os.path.join(self.path, f"{why}-{stamp}"), 1
        while os.path.exists(target):  # two within a second
            n += 1
            target = os.path.join(self.path, f"{why}-{stamp}-{n}")
        os.mkdir(target)
        for name in names:
            os.replace(os.path.join(self.path, name), os.path.join(target, name))
        return target

    def release(self):
        """Unlock (the process's exit would, too: this is for runs inside a longer-lived process)."""
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def abandon(self):
        """Undo a claim whose run failed to start: unlock, and remove the folders it created (with the lock
        file, the only thing in them yet)."""
        self.release()
        if self.created:
            if os.path.exists(self.lock_path):
                os.remove(self.lock_path)
            for folder in reversed(self.created):
                try:
                    os.rmdir(folder)
                except OSError:  # not empty after all: leave it
                    break
            self.created = []
