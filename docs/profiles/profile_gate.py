"""Where a bench gate's CPU goes per clip (README, Performance, "Where the gate's time goes").

    python docs/profiles/profile_gate.py WORKDIR CLIPS SENDERS RATE [py|native]

Starts a bench gate (the embedded defaults, or the site file named by $CFG),
pushes CLIPS clips from the phantoms in /tmp/rate/jpl (render them with
angiogate.bench.phantoms.render) over SENDERS parallel pynetdicom
associations from other processes (RATE clips/s in all, 0 = as fast as
they go), waits until all are judged, and prints the gate's CPU per clip by
thread (/proc/PID/task/*/stat; exited association threads as the process
total minus the live threads). With `py`, `py-spy record --threads` writes
WORKDIR/raw.txt (collapsed stacks, as gate-jpeg-lossless-24-clips.collapsed
beside this file: open it in speedscope.app or flamegraph.pl).
"""
import json, os, subprocess, sys, time, glob
from pathlib import Path
from multiprocessing import Process
import pydicom


from angiogate.bench.gate import BenchGate
from angiogate.bench.model import resolve_serving_model
from angiogate.bench.phantoms import new_uid
from angiogate.config import load_config

def sender(port, files, count, rate):
    from pynetdicom import AE
    ds = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title="PROF"); ae.maximum_pdu_size = int(os.environ.get("SCU_PDU", "0"))
    for d in ds: ae.add_requested_context(str(d.SOPClassUID), [str(d.file_meta.TransferSyntaxUID)])
    a = ae.associate("127.0.0.1", port, ae_title="ANGIOGATE")
    t0 = time.monotonic()
    for i in range(count):
        if rate:
            delay = t0 + i / rate - time.monotonic()
            if delay > 0: time.sleep(delay)
        d = ds[i % len(ds)]; u = new_uid(); d.SOPInstanceUID = u; d.file_meta.MediaStorageSOPInstanceUID = u
        s = a.send_c_store(d); assert s.Status == 0, s
    a.release()

def cpu(pid):
    out = {}
    for t in glob.glob(f"/proc/{pid}/task/*"):
        try:
            f = open(t + "/stat").read().rsplit(")", 1)[1].split()
            out[int(os.path.basename(t))] = (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        except OSError: pass
    return out

def proc_cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

def main():
    work = Path(sys.argv[1]); n = int(sys.argv[2]); senders = int(sys.argv[3]); rate = float(sys.argv[4])
    spy = sys.argv[5] if len(sys.argv) > 5 else ""
    files = sorted(glob.glob("/tmp/rate/jpl/**/*.dcm", recursive=True))[:8]
    config = load_config(Path(os.environ["CFG"]) if os.environ.get("CFG") else None)
    serving = resolve_serving_model(config, work / "m")
    gate = BenchGate(work / "gate", config, model_path=serving.path)
    gate.start(); pid = gate.child.proc.pid
    print(gate.model_banner(), flush=True)
    # warm: one clip judged
    p = Process(target=sender, args=(gate.port, files[:1], 1, 0)); p.start(); p.join()
    while gate.judged_count() < 1: time.sleep(0.2)
    before = cpu(pid); proc0 = proc_cpu(pid); t0 = time.monotonic()
    spyp = None
    if spy:
        spyp = subprocess.Popen(["py-spy", "record", "-p", str(pid), "-r", "50", "--threads", "--nonblocking",
                                 "-f", "raw", "-o", str(work / "raw.txt")] + (["--native"] if spy == "native" else []),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [Process(target=sender, args=(gate.port, files, n // senders, rate / senders if rate else 0)) for _ in range(senders)]
    for p in procs: p.start()
    for p in procs: p.join()
    t_sent = time.monotonic() - t0
    total = 1 + senders * (n // senders)
    while gate.judged_count() < total: time.sleep(0.2)
    t_all = time.monotonic() - t0
    after = cpu(pid)
    if spyp: spyp.send_signal(2); spyp.wait(60)
    d = {t: after[t] - before.get(t, 0) for t in after}
    tot = proc_cpu(pid) - proc0
    names = {}
    if spy:
        for line in open(work / "raw.txt"):
            head = line.split(";", 1)[0]
            if head.startswith("thread ("):
                tid = int(head[8:head.index(")")]); names[tid] = head.split(": ", 1)[1].split("@")[0] if ": " in head else "?"
    groups = {}
    for t, v in d.items():
        n = names.get(t, "native(openvino/other)")
        n = "judge-prepare" if n.startswith("judge-prepare") else n
        groups[n] = groups.get(n, 0) + v
    groups["exited threads (associations)"] = tot - sum(d.values())
    print(json.dumps({"clips": total - 1, "sent_s": round(t_sent, 2), "judged_s": round(t_all, 2),
        "gate_cpu_s": round(tot, 2), "cpu_ms_per_clip": round(tot / (total - 1) * 1000, 1),
        "cpu_ms_per_clip_by_thread": {k: round(v / (total - 1) * 1000, 1) for k, v in sorted(groups.items(), key=lambda x: -x[1])}}))
    gate.stop()

if __name__ == "__main__":
    main()
