/**
 * The QEMU backend of PassthroughVm: we start QEMU ourselves (provider/qemu/lifecycle.ts) and keep it in the
 * desired state through the state machine of provider/vm/plan.ts.
 *
 * Round trips on the usual paths: create→running is two (the facts and this VM's pidfile and unit under the host
 * lock, check's group expansion as the hint; then the start batch with the autostart unit), plus the QMP exchange;
 * delete is two (the pidfile and the process; then, after QMP's powerdown/quit, one batch that waits for the exit
 * and removes the per-VM files).
 */
import { PlanError } from "../errors";
import type { Host, Op, OpResult } from "../host/types";
import { BatchQuery } from "../host/query";
import { readVmFacts } from "../vm/facts";
import { VmAction, planVm, preflightProblems, resolveHostDevices, specOf } from "../vm/plan";
import { Normalized, PassthroughVmInputs, PassthroughVmOutputs, Shown, dflt, hugepagesHeldBy, outputsOf, safeNormalize } from "../vm/spec";
import { VmSpec, buildCommandLine, vmPaths } from "./cmdline";
import { Running, observe, pinVcpus, qmpConnect, removalOps, startQemu, stopQemu, syncUnit, unitOps } from "./lifecycle";

const statusOf = (o: { process: string; qmp: boolean; status?: Shown["status"] }): Shown["status"] => (o.process === "absent" ? "stopped" : o.qmp ? o.status ?? "unknown" : "unresponsive");

function outputs(inputs: PassthroughVmInputs, n: Normalized, spec: VmSpec, argv: string[], o: Shown): PassthroughVmOutputs {
    return outputsOf(inputs, n, spec.hostDevices, { commandLine: argv, domainXml: "" }, o);
}

/**
 * Under the lock: the facts (with the caller's reads in the same batch), the preflight, then the start. Refuses a
 * QEMU of this name that runs and is not ours (`refuseRunning`).
 */
async function startFresh(host: Host, inputs: PassthroughVmInputs, n: Normalized, q: BatchQuery, unitEnabled: (r: OpResult[]) => boolean, refuseRunning: boolean): Promise<{ spec: VmSpec; argv: string[]; run: Running }> {
    const paths = vmPaths(n.name);
    const { facts, results } = await readVmFacts(host, n, paths, { query: q, known: inputs.hostDevices });
    const alive = facts.pidFilePid !== null && (facts.comm.get(facts.pidFilePid) ?? "").startsWith("qemu-system");
    if (refuseRunning && alive) {
        throw new PlanError("name", `a QEMU for VM ${n.name} is already running (PID ${facts.pidFilePid}, ${paths.pidFile}) and this stack did not start it: stop it, or choose another name`);
    }
    const spec = specOf(n, resolveHostDevices(n.devices, facts));
    const problems = preflightProblems(n, spec.hostDevices, facts);
    if (problems.length) throw new PlanError(problems[0].property, `VM ${n.name} cannot start: ${problems.map((p) => p.reason).join("; ")}`);
    const argv = buildCommandLine(spec);
    const run = await startQemu(host, n, spec, argv, facts, unitOps(n, spec, argv, unitEnabled(results)));
    return { spec, argv, run };
}

/** Bring the host to the inputs from what `observe` shows, through the state machine ({@link planVm}). */
export async function converge(host: Host, inputs: PassthroughVmInputs, previous?: PassthroughVmOutputs): Promise<PassthroughVmOutputs> {
    const { n, failures } = safeNormalize(inputs);
    if (!n || failures.length) throw new PlanError(failures[0].property, failures.map((f) => f.reason).join("; "));
    const paths = vmPaths(n.name);
    if (!previous && n.running) {
        // A new VM: the facts, the unit and this VM's pidfile in one batch under the lock, then the start.
        return host.withLock(async (host) => {
            const q = new BatchQuery();
            const unit = q.one({ op: "stat", path: paths.unitFile }, (r) => r.ok);
            const { spec, argv, run } = await startFresh(host, inputs, n, q, unit, true);
            return outputs(inputs, n, spec, argv, { status: run.status, pid: run.pid, vcpuThreads: run.vcpuThreads, missingDevices: run.missingDevices, pinningOk: true });
        });
    }
    // What runs now is described by the previous outputs: their devices are what query-pci should list.
    const oldSpec = previous ? specOf(safeNormalize(previous).n ?? n, previous.hostDevices ?? []) : specOf(n, []);
    const seen = await observe(host, oldSpec, n, previous ? { pid: previous.pid, vcpuThreads: previous.vcpuThreads ?? [], commandLine: previous.commandLine } : undefined);
    if (!previous && seen.process === "alive") {
        throw new PlanError("name", `a QEMU for VM ${n.name} is already running (PID ${seen.pid}, ${paths.pidFile}) and this stack did not start it: stop it, or choose another name`);
    }
    const { facts } = await readVmFacts(host, n, paths);
    let spec = specOf(n, resolveHostDevices(n.devices, facts));
    let argv = buildCommandLine(spec);
    const actions: VmAction[] = planVm({ running: n.running, commandLine: argv, pinning: n.cpu.pinning }, seen).actions;
    if (actions.includes("start")) {
        // Refuse before stopping a VM that works: the new one must be able to start (its old self's holds aside).
        const problems = preflightProblems(n, spec.hostDevices, facts, seen.pid ?? undefined, hugepagesHeldBy(previous));
        if (problems.length) throw new PlanError(problems[0].property, `VM ${n.name} cannot start: ${problems.map((p) => p.reason).join("; ")}`);
    }
    let run: Running | undefined;
    let stopped = seen.process === "absent";
    let unitDone = false;
    for (const a of actions) {
        if (a === "stop") {
            await stopQemu(host, paths, seen.pid, n.shutdownTimeoutSeconds, true);
            stopped = true;
        } else if (a === "start") {
            // Again under the lock: a binding may have changed while the old VM shut down.
            const hint = { ...inputs, hostDevices: spec.hostDevices };
            ({ spec, argv, run } = await host.withLock((host) => startFresh(host, hint, n, new BatchQuery(), () => seen.autostartEnabled, false)));
            stopped = false;
            unitDone = true;
        } else if (a === "cont") {
            const client = await qmpConnect(host, paths.qmpSocket, 5000);
            try {
                await client.execute("cont");
            } finally {
                client.close();
            }
        } else if (a === "pin" && !run) {
            // A fresh start pins in startQemu; this is a running VM whose threads were moved.
            const bad = await pinVcpus(host, seen.pid!, seen.vcpuThreads, n.cpu.pinning!);
            if (bad.length) throw new Error(`VM ${n.name}: pinning vCPUs failed: ${bad.join("; ")}`);
        }
    }
    if (!unitDone) await syncUnit(host, n, spec, argv, seen.autostartEnabled);
    if (stopped) {
        await host.run([{ op: "remove", path: paths.pidFile }, { op: "remove", path: paths.qmpSocket }]);
        return outputs(inputs, n, spec, argv, { status: "stopped", pid: null, vcpuThreads: [], missingDevices: [], pinningOk: true });
    }
    if (run) return outputs(inputs, n, spec, argv, { status: run.status, pid: run.pid, vcpuThreads: run.vcpuThreads, missingDevices: run.missingDevices, pinningOk: true });
    // Kept running (nothing to do, or cont/pin): read it back.
    const now = await observe(host, spec, n, { pid: seen.pid, vcpuThreads: seen.vcpuThreads, commandLine: argv });
    return outputs(inputs, n, spec, argv, { status: statusOf(now), pid: now.pid, vcpuThreads: now.vcpuThreads, missingDevices: now.missingDevices, pinningOk: now.pinningOk });
}

/** The VM as the host shows it: a dead or changed VM is drift. */
export async function read(host: Host, props: PassthroughVmOutputs, n: Normalized): Promise<PassthroughVmOutputs> {
    const spec = specOf(n, props.hostDevices ?? []);
    const o = await observe(host, spec, n, { pid: props.pid ?? null, vcpuThreads: props.vcpuThreads ?? [], commandLine: props.commandLine });
    return { ...props, status: statusOf(o), pid: o.pid, vcpuThreads: o.process === "absent" ? [] : o.vcpuThreads, missingDevices: o.missingDevices, pinningOk: o.pinningOk };
}

/** Stop gracefully (powerdown → quit → signals), then remove the unit, the run dir and the VARS copy. */
export async function remove(host: Host, props: PassthroughVmOutputs): Promise<void> {
    const paths = vmPaths(props.name);
    // The pidfile and the process the state knows, in one round trip; systemd may have restarted it (new pid).
    const known = props.pid ?? null;
    const q = new BatchQuery();
    const filePid = q.one({ op: "read", path: paths.pidFile }, (r) => (r.ok && /^\d+$/.test(r.data.trim()) ? Number(r.data.trim()) : null));
    const knownIsQemu = known === null ? () => false : q.one({ op: "read", path: `/proc/${known}/comm` } as Op, (r) => r.ok && r.data.startsWith("qemu-system"));
    const r = await q.run(host);
    const pid = filePid(r) ?? known;
    const alive = pid !== null && pid === known && knownIsQemu(r);
    try {
        await stopQemu(host, paths, pid, props.shutdownTimeoutSeconds ?? dflt<number>("shutdownTimeoutSeconds"), alive, removalOps(paths, !!props.unit));
    } catch (e) {
        throw new Error(`VM ${props.name}: ${(e as Error).message}`);
    }
}
