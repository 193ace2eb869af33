/**
 * The libvirt backend of PassthroughVm: the VM is a persistent libvirt domain of the system QEMU driver, defined
 * from the XML of provider/libvirt/domainXml.ts and driven with virsh (provider/libvirt/virsh.ts) over the Host
 * seam, so it shows in `virsh list` and virt-manager and libvirt's autostart and hooks apply.
 *
 * - create/update, under the host lock: one batch reads the facts of provider/vm/facts.ts with the domain's state,
 *   its defined XML and its autostart link; the preflight is the QEMU backend's (groups bound and free, mdevs,
 *   shared memory, firmware, disks...); then one batch writes the XML (0600, in a 0700 dir), `virsh define`s it,
 *   sets autostart and `virsh start`s it. A failed start puts back what was there: the old definition, or none.
 *   A running domain whose definition changed is shut down and started again (libvirt applies a new definition
 *   at the next start).
 * - read: `virsh domstate` and `virsh dumpxml --inactive` in one batch: a stopped domain, or a definition edited by
 *   hand (virt-manager, `virsh edit`), is drift; `domainDrift` names the changed parts and `up` defines ours again.
 * - delete: `virsh shutdown`, wait up to shutdownTimeoutSeconds for `shut off`, then `virsh destroy`, and
 *   `virsh undefine --nvram`; with shutdownTimeoutSeconds 0, `destroy` and `undefine --nvram` in one batch.
 */
import { PlanError } from "../errors";
import type { Host, Op, OpResult } from "../host/types";
import { BatchQuery } from "../host/query";
import { vmPaths } from "../qemu/cmdline";
import { firstFailure } from "../sysfs/pci";
import { readVmFacts } from "../vm/facts";
import { preflightProblems, resolveHostDevices, specOf } from "../vm/plan";
import { LIBVIRT_RUN_DIR, Normalized, PassthroughVmInputs, PassthroughVmOutputs, VmStatus, dflt, outputsOf, safeNormalize } from "../vm/spec";
import { buildDomainXml, domainDrift, domainUuid, parseXml } from "./domainXml";
import * as v from "./virsh";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** What libvirt shows of the domain: its state (null: not defined), its defined XML, its autostart link. */
export interface DomainSeen {
    status: VmStatus | null;
    xml: string | null;
    autostart: boolean;
}

/**
 * The reads of {@link DomainSeen}, added to a batch. Without `definition` (a create: any domain of that name is
 * refused, so its XML is not needed) `xml` is null and one virsh run (~0.3 s on the lab) is saved.
 */
export function addDomainReads(q: BatchQuery, name: string, definition = true): (r: OpResult[]) => DomainSeen {
    const state = q.one(v.domstate(name), v.parseDomstate);
    const xml = definition ? q.one(v.dumpxml(name), (r) => (r.ok ? r.data : null)) : () => null;
    const auto = q.one({ op: "stat", path: `${v.AUTOSTART_DIR}/${name}.xml` }, (r) => r.ok);
    return (r) => ({ status: state(r), xml: xml(r), autostart: auto(r) });
}

/** Our parts that the defined domain does not have as we wrote them (see {@link domainDrift}); all when unparsable. */
export function driftOf(ours: string, defined: string | null): string[] {
    if (defined === null) return ["domain (not defined)"];
    try {
        return domainDrift(parseXml(ours), parseXml(defined));
    } catch (e) {
        return [`domain (its XML does not parse: ${(e as Error).message})`];
    }
}

/**
 * The domain XML of the normalized inputs and the devices they resolve to. `definedUuid`: the UUID of the domain
 * libvirt has now, written when the inputs name none (see DomainExtras.uuid); the XML kept in the outputs is
 * built without it, so that UUID is libvirt's to choose and never drift.
 */
export function domainXmlOf(n: Normalized, hostDevices: PassthroughVmOutputs["hostDevices"], definedUuid?: string): string {
    return buildDomainXml(specOf(n, hostDevices), { pinning: n.cpu.pinning, varsTemplate: n.firmware?.vars, uuid: definedUuid });
}

/**
 * The text to `virsh define` over a defined domain, and whether the old definition must be undefined first: a
 * domain keeps its UUID for life (libvirt refuses a definition of the same name under another one), so ours keeps
 * the defined UUID when the inputs name none, and a UUID the inputs changed needs `undefine --keep-nvram` first
 * (the guest's UEFI variables stay). Pure.
 */
export function definitionOf(n: Normalized, hostDevices: PassthroughVmOutputs["hostDevices"], definedXml: string | null): { text: string; undefineFirst: boolean } {
    const defined = definedXml === null ? undefined : domainUuid(definedXml);
    const ours = domainUuid(domainXmlOf(n, hostDevices));
    return { text: domainXmlOf(n, hostDevices, defined), undefineFirst: ours !== undefined && defined !== undefined && ours !== defined };
}

function fail(what: string, ops: Op[], r: OpResult[]): Error | undefined {
    const i = ops.findIndex((_, k) => !r[k].ok && !r[k].skipped && !(ops[k] as { optional?: boolean }).optional);
    if (i < 0) return undefined;
    const op = ops[i];
    return new Error(`${what}: ${op.op === "exec" ? `${op.argv.slice(3).join(" ")}: ${v.virshError(r[i])}` : firstFailure([op], [r[i]])?.message}`);
}

/** Shut the domain down within `timeoutS` (ACPI, then `virsh destroy`), then `after` in the same batch as destroy. */
async function stopDomain(host: Host, name: string, running: boolean, timeoutS: number, after: Op[]): Promise<void> {
    if (running && timeoutS > 0) {
        await host.run([v.shutdown(name)]);
        const until = Date.now() + timeoutS * 1000;
        for (;;) {
            const [r] = await host.run([v.domstate(name)]);
            const s = v.parseDomstate(r);
            if (s === null || s === "stopped") break;
            if (Date.now() > until) break;
            await sleep(500);
        }
    }
    const ops = [...(running ? destroyed(name) : []), ...after];
    if (!ops.length) return;
    const r = await host.run(ops, { stopOnError: true });
    if (running) stillRunning(name, r);
    const e = fail(`VM ${name}`, ops, r);
    if (e) throw e;
}

/**
 * `virsh destroy` and the guard that it worked: libvirt deletes the QEMU pidfile (/run/libvirt/qemu/<name>.pid)
 * once the process is gone. A QEMU that destroy cannot end (in D state on a vfio device) fails the guard, which
 * stops the batch before an undefine would leave a transient domain that still runs and holds the groups.
 */
const destroyed = (name: string): Op[] => [v.destroy(name), { op: "read", path: `${LIBVIRT_RUN_DIR}/${name}.pid`, expect: "" }];

/** Throws when the guard of {@link destroyed} (results 0 and 1 of `r`) failed. */
function stillRunning(name: string, r: OpResult[]): void {
    if (!r[1].ok) throw new Error(`VM ${name}: still running after virsh destroy ${name}: ${r[0].ok ? "its QEMU has not exited" : v.virshError(r[0])}`);
}

/** Bring the domain to the inputs (see the file's comment). */
export async function converge(host: Host, inputs: PassthroughVmInputs, previous?: PassthroughVmOutputs): Promise<PassthroughVmOutputs> {
    const { n, failures } = safeNormalize(inputs);
    if (!n || failures.length) throw new PlanError(failures[0].property, failures.map((f) => f.reason).join("; "));
    const name = n.name;
    const paths = vmPaths(name);
    return host.withLock(async (host) => {
        const q = new BatchQuery();
        const seenPart = addDomainReads(q, name, previous !== undefined);
        const { facts, results } = await readVmFacts(host, n, paths, { query: q, known: inputs.hostDevices });
        const seen = seenPart(results);
        if (!previous && seen.status !== null) {
            throw new PlanError("name", `a libvirt domain named ${name} is already defined (virsh -c ${v.LIBVIRT_URI} list --all) and this stack did not define it: undefine it, or choose another name`);
        }
        const hostDevices = resolveHostDevices(n.devices, facts);
        const xml = domainXmlOf(n, hostDevices);
        const drift = driftOf(xml, seen.xml);
        const running = seen.status !== null && seen.status !== "stopped";
        const redefine = drift.length > 0;
        const willStart = n.running && (!running || redefine);
        if (willStart) {
            // Its own holds on the groups aside: a running domain of ours is shut down before the new start.
            const own = running ? facts.vfioOpeners : undefined;
            const problems = preflightProblems(n, hostDevices, own ? { ...facts, vfioOpeners: new Map() } : facts);
            if (problems.length) throw new PlanError(problems[0].property, `VM ${name} cannot start: ${problems.map((p) => p.reason).join("; ")}`);
        }
        // A change reaches a running domain at its next start; a stop asked for is a stop.
        if (running && (!n.running || (redefine && n.running))) await stopDomain(host, name, true, n.shutdownTimeoutSeconds, []);

        const file = `${paths.runDir}/domain.xml`;
        const ops: Op[] = [];
        const def = definitionOf(n, hostDevices, seen.xml);
        if (redefine) {
            ops.push({ op: "mkdir", path: paths.runDir, mode: 0o700 }, { op: "put", path: file, data: def.text, mode: 0o600 });
            if (def.undefineFirst) ops.push(v.virsh(["undefine", "--keep-nvram", name]));
            ops.push(v.define(file), { op: "remove", path: file });
        }
        // An undefine drops the autostart link with the old definition.
        if (seen.autostart !== n.autostart || (redefine && def.undefineFirst && n.autostart)) ops.push(v.autostart(name, n.autostart));
        if (n.running && (willStart || !running)) ops.push(v.start(name));
        else if (n.running && seen.status === "paused") ops.push(v.resume(name));
        const r = ops.length ? await host.run(ops, { stopOnError: true }) : [];
        const err = ops.length ? fail(`VM ${name}`, ops, r) : undefined;
        if (err) {
            // Put back what was there: the old definition (re-defined from its XML), or no domain at all.
            const back: Op[] = seen.xml !== null ? [{ op: "put", path: file, data: seen.xml, mode: 0o600 }, v.define(file), { op: "remove", path: file }] : [v.destroy(name), v.virsh(["undefine", "--nvram", name], { optional: true })];
            if (redefine) await host.run(back);
            throw err;
        }
        // `virsh start` and `resume` return once the vCPUs run; a domain that dies right after is read's to see.
        const status: VmStatus = n.running && (willStart || !running || seen.status === "paused") ? "running" : running && !n.running ? "stopped" : (seen.status ?? "stopped");
        return outputsOf(inputs, n, hostDevices, { commandLine: [], domainXml: xml }, { status, pid: null, vcpuThreads: [], missingDevices: [], pinningOk: true, domainDrift: [] });
    });
}

/** The domain as libvirt shows it: its state, and the parts of its definition that are not ours any more. */
export async function read(host: Host, props: PassthroughVmOutputs): Promise<PassthroughVmOutputs> {
    const q = new BatchQuery();
    const seen = addDomainReads(q, props.name)(await q.run(host));
    return { ...props, status: seen.status ?? "stopped", domainDrift: driftOf(props.domainXml, seen.xml) };
}

/** Shut down (a running domain first), then undefine with its NVRAM and remove our run dir. */
export async function remove(host: Host, props: PassthroughVmOutputs): Promise<void> {
    const name = props.name;
    const paths = vmPaths(name);
    const timeoutS = props.shutdownTimeoutSeconds ?? dflt<number>("shutdownTimeoutSeconds");
    const rmdir: Op = { op: "exec", argv: ["rmdir", "--ignore-fail-on-non-empty", paths.runDir], optional: true };
    if (timeoutS === 0) {
        // No grace time: what a user types, in one batch. destroy fails harmlessly on a domain that is not running
        // (see destroyed for its guard); undefine's "failed to get domain" means it is already gone.
        const ops: Op[] = [...destroyed(name), v.virsh(["undefine", "--nvram", name], { optional: true }), rmdir];
        const r = await host.run(ops, { stopOnError: true });
        stillRunning(name, r);
        if (!r[2].ok && !v.isNoDomain(r[2])) throw new Error(`VM ${name}: undefine --nvram ${name}: ${v.virshError(r[2])}`);
        return;
    }
    // With a grace time, the ACPI request goes in the first batch with the state read.
    const first: Op[] = [v.domstate(name), v.shutdown(name)];
    const [state] = await host.run(first);
    const status = v.parseDomstate(state);
    if (status === null) return;
    const running = status !== "stopped";
    if (running) {
        const until = Date.now() + timeoutS * 1000;
        for (;;) {
            await sleep(500);
            const s = v.parseDomstate((await host.run([v.domstate(name)]))[0]);
            if (s === null || s === "stopped" || Date.now() > until) break;
        }
    }
    await stopDomain(host, name, running, 0, [v.undefine(name), rmdir]);
}
