/**
 * The QEMU backend's process lifecycle over the Host seam: start QEMU daemonized (argv, never a shell) and wait for
 * its QMP socket, check the devices and pin the vCPUs, observe a running VM, stop it gracefully (powerdown → quit →
 * SIGTERM → SIGKILL), and the systemd unit for autostart.
 *
 * Round trips: a start is one batch (dirs, VARS copy, QEMU, socket mode, pidfile, and the caller's extra ops: the
 * autostart unit), then QMP on the socket (its queries pipelined); a stop is QMP, then one batch that waits for the
 * process to exit and does the caller's cleanup (the per-VM files); signals only when QEMU did not go.
 */
import type { Host, Op, OpResult } from "../host/types";
import { BatchQuery } from "../host/query";
import { firstFailure } from "../sysfs/pci";
import type { Normalized, VmStatus } from "../vm/spec";
import { parseCpuList } from "../vm/spec";
import type { VmFacts } from "../vm/facts";
import type { VmObserved } from "../vm/plan";
import { VmPaths, VmSpec, expectedDevices, systemdUnit } from "./cmdline";
import { QmpClient, QmpCpu, QmpTimeout, flattenPci } from "./qmp";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function qmpConnect(host: Host, socket: string, timeoutMs: number): Promise<QmpClient> {
    const stream = await host.openUnixSocket(socket);
    return QmpClient.connect(stream, timeoutMs);
}

/** Connect, retrying while QEMU sets up its socket (it listens before -daemonize returns; a retry covers slow hosts). */
async function qmpWait(host: Host, socket: string, totalMs: number): Promise<QmpClient> {
    const until = Date.now() + totalMs;
    let last: Error | undefined;
    for (;;) {
        try {
            return await qmpConnect(host, socket, Math.max(1000, Math.min(5000, until - Date.now())));
        } catch (e) {
            last = e as Error;
            if (Date.now() + 200 > until) break;
            await sleep(200);
        }
    }
    throw new Error(`QMP socket ${socket} did not answer within ${totalMs} ms: ${last?.message}`);
}

export async function processAlive(host: Host, pid: number): Promise<boolean> {
    const [r] = await host.run([{ op: "read", path: `/proc/${pid}/comm` }]);
    return r.ok && r.data.startsWith("qemu-system");
}

async function waitGone(host: Host, pid: number, ms: number): Promise<boolean> {
    const until = Date.now() + ms;
    for (;;) {
        if (!(await processAlive(host, pid))) return true;
        if (Date.now() > until) return false;
        await sleep(200);
    }
}

/**
 * Waits, on the host, until process `pid` has exited: `tail --pid=PID -f /dev/null` (GNU coreutils tail(1): with
 * --pid, tail ends once PID is gone, checked every `-s` seconds), within `ms` (then ETIMEDOUT, the batch stops).
 */
export function waitExit(pid: number, ms: number): Op {
    return { op: "exec", argv: ["tail", "-s", "0.05", `--pid=${pid}`, "-f", "/dev/null"], timeoutMs: ms };
}

async function runAfter(host: Host, after: Op[]): Promise<void> {
    if (!after.length) return;
    const r = await host.run(after);
    const f = firstFailure(after, r);
    if (f) throw new Error(`the VM stopped, but ${f.message}`);
}

export interface StopReport {
    /** How the VM ended: the guest shut down, QMP quit, SIGTERM, SIGKILL, or it was not running. */
    how: "guest-shutdown" | "quit" | "sigterm" | "sigkill" | "not-running";
    ms: number;
}

/**
 * Graceful stop: `system_powerdown` only asks the guest (ACPI); a guest without an OS never answers, so after
 * `timeoutS` without a SHUTDOWN event QEMU is told to `quit`, then signalled.
 */
export async function stopQemu(host: Host, paths: VmPaths, pid: number | null, timeoutS: number, knownAlive = false, after: Op[] = []): Promise<StopReport> {
    const t0 = Date.now();
    const finish = async (how: StopReport["how"]): Promise<StopReport> => {
        await runAfter(host, after);
        return { how, ms: Date.now() - t0 };
    };
    if (pid === null || (!knownAlive && !(await processAlive(host, pid)))) return finish("not-running");
    let client: QmpClient | undefined;
    try {
        client = await qmpConnect(host, paths.qmpSocket, 5000);
    } catch {
        client = undefined;
    }
    let how: StopReport["how"] | undefined;
    if (client) {
        try {
            const from = client.events.length;
            await client.execute("system_powerdown", undefined, 5000).catch(() => undefined);
            const ev = await client.waitForEvent("SHUTDOWN", timeoutS * 1000, from);
            if (ev) {
                how = "guest-shutdown";
                await client.waitClosed(10_000);
            } else if (!client.isClosed) {
                await client.execute("quit", undefined, 5000).catch(() => undefined);
                how = "quit";
                await client.waitClosed(10_000);
            }
        } finally {
            client.close();
        }
        if (how) {
            // QEMU closed QMP on its way out: wait for the process to end and do the caller's cleanup, one batch.
            const q = new BatchQuery();
            const exited = q.one(waitExit(pid, 5000), (r) => r.ok);
            const cleanup = q.add(after, (r) => firstFailure(after, r));
            const r = await q.run(host, { stopOnError: true });
            if (exited(r)) {
                const f = cleanup(r);
                if (f) throw new Error(`QEMU PID ${pid} stopped (${how}), but ${f.message}`);
                return { how, ms: Date.now() - t0 };
            }
        }
    }
    await host.run([{ op: "exec", argv: ["kill", "-s", "TERM", String(pid)], optional: true }]);
    if (await waitGone(host, pid, 5000)) return finish("sigterm");
    await host.run([{ op: "exec", argv: ["kill", "-s", "KILL", String(pid)], optional: true }]);
    if (await waitGone(host, pid, 10_000)) return finish("sigkill");
    throw new Error(`QEMU PID ${pid} is still alive after SIGKILL (blocked in the kernel, D state?); check dmesg`);
}

export interface Running {
    pid: number;
    status: VmStatus;
    vcpuThreads: number[];
    missingDevices: string[];
}

/**
 * Query a running QEMU: status, which expected devices it has, vCPU threads. query-pci walks a bridge only once the
 * guest firmware has programmed its secondary bus number (QEMU's qmp_query_pci_bridge), so right after start the
 * functions behind our root ports are not in it yet; QEMU's device tree (`qom-list /machine/peripheral`, every
 * realized -device by id) is the witness for those.
 */
export async function inspect(client: QmpClient, spec: VmSpec): Promise<Omit<Running, "pid">> {
    // Sent together: QMP answers in order, by id, so the four queries cost one exchange on the socket.
    const [status, pciTree, peripheral, cpus] = await Promise.all([
        client.execute("query-status"),
        client.execute("query-pci"),
        client.execute("qom-list", { path: "/machine/peripheral" }),
        client.execute("query-cpus-fast") as Promise<QmpCpu[]>,
    ]);
    const ids = new Set([...flattenPci(pciTree).map((d) => d.qdev_id), ...peripheral.filter((p) => p.type.startsWith("child<")).map((p) => p.name)]);
    const missing = expectedDevices(spec).filter((d) => !ids.has(d.id)).map((d) => `${d.id} (${d.what})`);
    return { status: status.status as VmStatus, vcpuThreads: [...cpus].sort((a, b) => a["cpu-index"] - b["cpu-index"]).map((c) => c["thread-id"]), missingDevices: missing };
}

/** Pin each vCPU thread to its host CPU with taskset and read the affinity back. Returns the mismatches. */
export async function pinVcpus(host: Host, pid: number, threads: number[], pinning: number[]): Promise<string[]> {
    const ops: Op[] = threads.map((tid, i): Op => ({ op: "exec", argv: ["taskset", "-p", "-c", String(pinning[i]), String(tid)] }));
    const q = new BatchQuery();
    const pinned = q.add(ops, (r) => firstFailure(ops, r));
    const status = q.add(
        threads.map((tid): Op => ({ op: "read", path: `/proc/${pid}/task/${tid}/status` })),
        (r) => r,
    );
    const r = await q.run(host);
    const f = pinned(r);
    if (f) return [f.message];
    return pinningMismatches(status(r), threads, pinning);
}

export function pinningMismatches(status: OpResult[], threads: number[], pinning: number[]): string[] {
    return threads.flatMap((tid, i) => {
        const m = status[i]?.ok ? /Cpus_allowed_list:\s*(\S+)/.exec(status[i].data) : null;
        const have = m ? parseCpuList(m[1]) : [];
        return have.length === 1 && have[0] === pinning[i] ? [] : [`vCPU ${i} (thread ${tid}) runs on CPUs ${m?.[1] ?? "?"}, not ${pinning[i]}`];
    });
}

/**
 * Start QEMU and check it: the per-VM dirs (0700), the VARS copy (kept across restarts: it holds the UEFI boot
 * entries), QEMU daemonized (argv, never a shell), the QMP socket made 0600, then QMP: status and every device.
 * On failure QEMU is stopped and the error carries its stderr.
 */
export async function startQemu(host: Host, n: Normalized, spec: VmSpec, argv: string[], facts: VmFacts, extra: Op[] = []): Promise<Running> {
    const p = spec.paths;
    const ops: Op[] = [
        { op: "mkdir", path: p.runDir, mode: 0o700 },
        { op: "exec", argv: ["chmod", "0700", p.runDir] },
        { op: "mkdir", path: p.stateDir, mode: 0o700 },
        { op: "remove", path: p.pidFile },
        { op: "remove", path: p.qmpSocket },
    ];
    if (n.firmware && facts.env.nodes.get(p.varsFile) !== "file") ops.push({ op: "exec", argv: ["cp", "--", n.firmware.vars, p.varsFile] }, { op: "exec", argv: ["chmod", "0600", p.varsFile] });
    const socketOp: Op = { op: "exec", argv: ["chmod", "0600", p.qmpSocket] };
    const q = new BatchQuery();
    const prepared = q.add(ops, (r) => firstFailure(ops, r));
    const qemu = q.one({ op: "exec", argv, timeoutMs: 120_000 }, (r) => r);
    const socket = q.one(socketOp, (r) => firstFailure([socketOp], [r]));
    const pidText = q.one({ op: "read", path: p.pidFile }, (r) => (r.ok ? Number(r.data.trim()) : NaN));
    const extraDone = q.add(extra, (r) => firstFailure(extra, r));
    const r = await q.run(host, { stopOnError: true });
    const prepFailure = prepared(r);
    if (prepFailure) throw prepFailure;
    const started = qemu(r);
    if (!started.ok) {
        const stderr = (started.message ?? "").replace(/ \| /g, "\n").trim();
        throw new Error(`QEMU for VM ${spec.name} did not start (status ${started.code}):\n${stderr || "(no output)"}`);
    }
    const pid = pidText(r);
    try {
        const socketFailure = socket(r);
        if (socketFailure) throw socketFailure;
        const extraFailure = extraDone(r);
        if (extraFailure) throw extraFailure;
        if (!Number.isInteger(pid)) throw new Error(`QEMU started but wrote no pidfile ${p.pidFile}`);
        const client = await qmpWait(host, p.qmpSocket, 15_000);
        let info: Omit<Running, "pid">;
        try {
            info = await inspect(client, spec);
        } finally {
            client.close();
        }
        if (info.missingDevices.length) throw new Error(`query-pci does not list ${info.missingDevices.join(", ")}`);
        if (info.status !== "running") throw new Error(`QEMU reports status ${info.status}, not running`);
        if (n.cpu.pinning?.length) {
            const bad = await pinVcpus(host, pid, info.vcpuThreads, n.cpu.pinning);
            if (bad.length) throw new Error(`pinning vCPUs failed: ${bad.join("; ")}`);
        }
        return { pid, ...info };
    } catch (e) {
        const stop = await stopQemu(host, p, Number.isInteger(pid) ? pid : null, 0).catch((x) => ({ how: `not stopped: ${(x as Error).message}` }));
        throw new Error(`VM ${spec.name}: QEMU started but ${(e as Error).message}; QEMU was stopped (${stop.how})`);
    }
}


export interface Observation extends VmObserved {
    pid: number | null;
    vcpuThreads: number[];
    autostartEnabled: boolean;
}

/**
 * What the host shows for this VM: one round trip (pidfile, the process, vCPU affinities, the unit), then QMP; a
 * second round trip only when the pid changed (systemd started it at boot) and pinning is to be checked.
 */
export async function observe(host: Host, spec: VmSpec, n: Normalized, known?: { pid: number | null; vcpuThreads: number[]; commandLine?: string[] }): Promise<Observation> {
    const p = spec.paths;
    const kp = known?.pid ?? null;
    const q = new BatchQuery();
    const pidFile = q.one({ op: "read", path: p.pidFile }, (r) => (r.ok && /^\d+$/.test(r.data.trim()) ? Number(r.data.trim()) : null));
    const unit = q.one({ op: "stat", path: p.unitFile }, (r) => r.ok);
    const knownIsQemu = kp === null ? () => false : q.one({ op: "read", path: `/proc/${kp}/comm` }, (r) => r.ok && r.data.startsWith("qemu-system"));
    const knownThreads = q.add(
        kp === null ? [] : (known?.vcpuThreads ?? []).map((t): Op => ({ op: "read", path: `/proc/${kp}/task/${t}/status` })),
        (r) => r,
    );
    const r = await q.run(host);
    const autostartEnabled = unit(r);
    const pid = pidFile(r) ?? kp;
    const base: Observation = { process: "absent", qmp: false, pid: null, vcpuThreads: [], missingDevices: [], pinningOk: true, autostartEnabled, commandLine: known?.commandLine };
    if (pid === null) return base;
    const alive = pid === kp ? knownIsQemu(r) : await processAlive(host, pid);
    if (!alive) return base;
    let info: Omit<Running, "pid"> | undefined;
    try {
        const client = await qmpConnect(host, p.qmpSocket, 5000);
        try {
            const name = await client.execute("query-name");
            if (name.name !== undefined && name.name !== spec.name) throw new Error(`the QEMU on ${p.qmpSocket} is ${name.name}`);
            info = await inspect(client, spec);
        } finally {
            client.close();
        }
    } catch (e) {
        if (!(e instanceof QmpTimeout) && !/cannot connect|ECONNREFUSED|ENOENT|open failed|is /.test((e as Error).message)) throw e;
        return { ...base, process: "alive", pid, qmp: false };
    }
    let pinningOk = true;
    const pinning = n.cpu.pinning;
    if (pinning?.length) {
        const sameThreads = pid === kp && JSON.stringify(info.vcpuThreads) === JSON.stringify(known?.vcpuThreads ?? []);
        const status = sameThreads ? knownThreads(r) : await host.run(info.vcpuThreads.map((t): Op => ({ op: "read", path: `/proc/${pid}/task/${t}/status` })));
        pinningOk = pinningMismatches(status, info.vcpuThreads, pinning).length === 0;
    }
    return { ...base, process: "alive", qmp: true, pid, status: info.status, vcpuThreads: info.vcpuThreads, missingDevices: info.missingDevices, pinningOk };
}


/** The ops that bring the autostart unit to the inputs: written and enabled, or disabled and removed, or none. */
export function unitOps(n: Normalized, spec: VmSpec, argv: string[], enabledNow: boolean): Op[] {
    const p = spec.paths;
    return n.autostart
        ? [
              { op: "put", path: p.unitFile, data: systemdUnit(spec, argv, n.shutdownTimeoutSeconds), mode: 0o644 },
              { op: "exec", argv: ["systemctl", "daemon-reload"] },
              { op: "exec", argv: ["systemctl", "enable", p.unitName] },
          ]
        : enabledNow
          ? [{ op: "exec", argv: ["systemctl", "disable", p.unitName], optional: true }, { op: "remove", path: p.unitFile }, { op: "exec", argv: ["systemctl", "daemon-reload"], optional: true }]
          : [];
}

/** The unit for autostart, in its own batch (see {@link unitOps}). */
export async function syncUnit(host: Host, n: Normalized, spec: VmSpec, argv: string[], enabledNow: boolean): Promise<void> {
    const ops = unitOps(n, spec, argv, enabledNow);
    if (!ops.length) return;
    const r = await host.run(ops, { stopOnError: true });
    const f = firstFailure(ops, r);
    if (f) throw new Error(`autostart: ${f.message}`);
}

/** The per-VM files removed when the VM is deleted (the unit's ops first when there is one). */
export function removalOps(paths: VmPaths, unit: boolean): Op[] {
    const ops: Op[] = [];
    if (unit) ops.push({ op: "exec", argv: ["systemctl", "disable", paths.unitName], optional: true }, { op: "remove", path: paths.unitFile }, { op: "exec", argv: ["systemctl", "daemon-reload"], optional: true });
    ops.push(
        { op: "remove", path: paths.pidFile },
        { op: "remove", path: paths.qmpSocket },
        { op: "remove", path: paths.serialLog },
        { op: "remove", path: paths.varsFile },
        { op: "exec", argv: ["rmdir", "--ignore-fail-on-non-empty", paths.runDir], optional: true },
        { op: "exec", argv: ["rmdir", "--ignore-fail-on-non-empty", paths.stateDir], optional: true },
    );
    return ops;
}
