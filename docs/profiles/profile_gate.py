"""Where a bench gate's CPU goes per clip (README, Performance, "Where the gate's time goes").

    python docs/profiles/profile_gate.py WORKDIR CLIPS SENDERS RATE [py|native]

Starts a bench gate (the embedded defaults, or the site file named by $CFG),
pushes CLIPS clips made from the phantoms in /tmp/rate/jpl (render them with
angiogate.bench.phantoms.render), each with a fresh SOP Instance UID, over
SENDERS parallel associations from other processes, waits until all are
judged, and prints the CPU per clip of the gate (by thread:
/proc/PID/task/*/stat, exited association threads as the process total minus
the live threads) and of the senders.

The senders are DCMTK storescu (`$SENDER=storescu`, the default: the files
are written first, one folder per sender, all sent as fast as they go, RATE
ignored; $SEND_DIR keeps them for the next run: each run's gate has a
new verdict log, so the UIDs are fresh to it) or pynetdicom SCUs (`$SENDER=pynetdicom`, RATE clips/s in all, 0 =
as fast as they go). With `py` or `native`, `py-spy record --threads` at
200 Hz (`--native` blocks the process while it samples; `$SPY_IDLE`: with
`--idle`; `$SPY_GIL`: only samples holding the GIL) writes WORKDIR/raw.txt (collapsed stacks, as the .collapsed files
beside this script: open them in speedscope.app or flamegraph.pl).
"""
import glob
import json
import os
import resource
import subprocess
import sys
import time
from multiprocessing import Process
from pathlib import Path

import pydicom

from angiogate.bench.gate import BenchGate
from angiogate.bench.model import resolve_serving_model
from angiogate.bench.phantoms import new_uid
from angiogate.children.dcmtk import dcmtk
from angiogate.config import load_config


def pynetdicom_sender(port, files, count, rate):
    from pynetdicom import AE
    ds = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title="PROF")
    ae.maximum_pdu_size = int(os.environ.get("SCU_PDU", "0"))
    for d in ds:
        ae.add_requested_context(str(d.SOPClassUID), [str(d.file_meta.TransferSyntaxUID)])
    a = ae.associate("127.0.0.1", port, ae_title="ANGIOGATE")
    t0 = time.monotonic()
    for i in range(count):
        if rate:
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        d = ds[i % len(ds)]
        u = new_uid()
        d.SOPInstanceUID = u
        d.file_meta.MediaStorageSOPInstanceUID = u
        s = a.send_c_store(d)
        assert s.Status == 0, s
    a.release()


def write_fresh(files, folder: Path, count: int) -> None:
    """`count` copies of `files` (round robin) with fresh SOP Instance UIDs in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = [pydicom.dcmread(f) for f in files]
    for i in range(count):
        d = ds[i % len(ds)]
        u = new_uid()
        d.SOPInstanceUID = u
        d.file_meta.MediaStorageSOPInstanceUID = u
        d.save_as(folder / f"{i:05d}.dcm", enforce_file_format=True)


def storescu(port, folder: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([dcmtk("storescu"), "-v", "-nh", "-xs", "-aet", "PROF", "-aec", "ANGIOGATE",
                             "127.0.0.1", str(port), "+sd", "+sp", "*.dcm", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def cpu(pid):
    out = {}
    for t in glob.glob(f"/proc/{pid}/task/*"):
        try:
            f = open(t + "/stat").read().rsplit(")", 1)[1].split()
            out[int(os.path.basename(t))] = (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return out


def proc_cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main():
    work = Path(sys.argv[1])
    n, senders, rate = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    spy = sys.argv[5] if len(sys.argv) > 5 else ""
    kind = os.environ.get("SENDER", "storescu")
    files = sorted(glob.glob("/tmp/rate/jpl/**/*.dcm", recursive=True))[:8]
    per_sender = n // senders
    send = Path(os.environ.get("SEND_DIR", work / "send"))  # $SEND_DIR: reuse files written before
    if kind == "storescu":
        for k in range(senders):
            if len(list((send / str(k)).glob("*.dcm"))) != per_sender:
                write_fresh(files, send / str(k), per_sender)
    config = load_config(Path(os.environ["CFG"]) if os.environ.get("CFG") else None)
    serving = resolve_serving_model(config, work / "m")
    gate = BenchGate(work / "gate", config, model_path=serving.path)
    gate.start()
    pid = gate.child.proc.pid
    print(gate.model_banner(), flush=True)
    p = Process(target=pynetdicom_sender, args=(gate.port, files[:1], 1, 0))  # warm: one clip judged
    p.start()
    p.join()
    while gate.judged_count() < 1:
        time.sleep(0.2)
    time.sleep(1)
    before, proc0, senders0, t0 = cpu(pid), proc_cpu(pid), children_cpu(), time.monotonic()
    spyp = None
    if spy:
        spyp = subprocess.Popen(["py-spy", "record", "-p", str(pid), "-r", "200", "--threads", "-f", "raw", "-o", str(work / "raw.txt")]
                                + (["--native"] if spy == "native" else ["--nonblocking"])
                                + (["--idle"] if os.environ.get("SPY_IDLE") else [])
                                + (["--gil"] if os.environ.get("SPY_GIL") else []),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if kind == "storescu":
        procs = [storescu(gate.port, send / str(k), work / f"storescu-{k}.log") for k in range(senders)]
        for p in procs:
            p.wait()
    else:
        procs = [Process(target=pynetdicom_sender, args=(gate.port, files, per_sender,
                                                         rate / senders if rate else 0)) for _ in range(senders)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    t_sent = time.monotonic() - t0
    sender_cpu = children_cpu() - senders0
    total = 1 + senders * per_sender
    while gate.judged_count() < total:
        if not gate.alive():
            raise SystemExit(gate.log_tail())
        time.sleep(0.1)
    t_all = time.monotonic() - t0
    after, tot = cpu(pid), proc_cpu(pid) - proc0
    if spyp:
        spyp.send_signal(2)
        spyp.wait(60)
    if kind == "storescu":
        ok = sum(open(work / f"storescu-{k}.log").read().count("Received Store Response (Success)")
                 for k in range(senders))
        assert ok == total - 1, f"{ok} of {total - 1} stores answered Success"
    d = {t: after[t] - before.get(t, 0) for t in after}
    names = {}
    if spy:
        for line in open(work / "raw.txt"):
            head = line.split(";", 1)[0]
            if head.startswith("thread ("):
                tid = int(head[8:head.index(")")])
                names[tid] = head.split(": ", 1)[1].split("@")[0] if ": " in head else "?"
    groups = {}
    for t, v in d.items():
        name = names.get(t, "native(openvino/other)")
        name = "judge-prepare" if name.startswith("judge-prepare") else name
        groups[name] = groups.get(name, 0) + v
    groups["exited threads (associations)"] = tot - sum(d.values())
    clips = total - 1
    print(json.dumps({
        "clips": clips, "senders": f"{senders} x {kind}", "sent_s": round(t_sent, 2), "judged_s": round(t_all, 2),
        "gate_cpu_s": round(tot, 2), "gate_cpu_ms_per_clip": round(tot / clips * 1000, 1),
        "sender_cpu_ms_per_clip": round(sender_cpu / clips * 1000, 1),
        "total_cpu_ms_per_clip": round((tot + sender_cpu) / clips * 1000, 1),
        "load_avg_1m": os.getloadavg()[0],
        "gate_cpu_ms_per_clip_by_thread": {k: round(v / clips * 1000, 1)
                                           for k, v in sorted(groups.items(), key=lambda x: -x[1])}}))
    gate.stop()


if __name__ == "__main__":
    main()
