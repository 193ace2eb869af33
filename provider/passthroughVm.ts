/**
 * PassthroughVm: what happens on `pulumi preview` / `up` / `refresh` / `destroy` for "this VM runs with these
 * devices passed through". One VM specification (provider/vm/spec.ts) and its planning (provider/vm/plan.ts),
 * run by the backend the `backend` input names:
 *
 * - `qemu` (default): we start QEMU daemonized with a pidfile and a QMP socket, check its devices over QMP, pin
 *   its vCPUs, and write a systemd unit for autostart (provider/qemu/backend.ts, provider/qemu/lifecycle.ts).
 * - `libvirt`: the VM is a persistent libvirt domain (`virsh -c qemu:///system`), visible in `virsh list` and
 *   virt-manager (provider/libvirt/domain.ts), its XML built by provider/libvirt/domainXml.ts.
 *
 * - check: validate, expand every passed-through device to the functions of its IOMMU group (read from the host),
 *   refuse what the start would fail on and no other resource of the same `up` can provide (QEMU itself, KVM,
 *   OVMF, disks, hugepages, bridge: provider/qemu/preflight.ts, read in the same batch), and return what will run
 *   (`commandLine`: the QEMU argv; `domainXml`: the libvirt domain), so the preview shows it and what changes.
 * - create/update: under the host lock, the preflight (every group viable and bound to vfio-pci, /dev/vfio/N
 *   present and free, mdevs, shared memory, firmware, disks, KVM, hugepages), then the backend starts the VM.
 * - read: what the host shows; a VM that died, or a domain edited by hand (`domainDrift`), is drift for `up`.
 * - delete: a graceful shutdown within shutdownTimeoutSeconds, then harder; the VM's files removed.
 *
 * Every function takes an optional last `onHost` (tests); the dynamic provider gets the host from `connection`.
 */
import { CheckResult, containsUnknown, isUnknown, validate } from "./check";
import { withHost } from "./host";
import { hostIdentity } from "./host/ssh";
import type { Host } from "./host/types";
import { VM_NAME, buildCommandLine, layoutProblems, vmPaths } from "./qemu/cmdline";
import { envProblems } from "./qemu/preflight";
import * as qemu from "./qemu/backend";
import * as libvirt from "./libvirt/domain";
import { readVmFacts } from "./vm/facts";
import { resolveHostDevices, specOf, structuralProblems } from "./vm/plan";
import { PassthroughVmInputs, PassthroughVmOutputs, dflt, hugepagesHeldBy, normalize, preflightWant, safeNormalize } from "./vm/spec";

export type { DiskInput, MdevInput, PassthroughDeviceInput, PassthroughVmInputs, PassthroughVmOutputs, VmStatus, VmBackend } from "./vm/spec";
export { inputProblems, normalize, preflightWant } from "./vm/spec";
export type { DeviceFacts, VmFacts } from "./vm/facts";
export { readVmFacts } from "./vm/facts";
export type { VmAction, VmDesired, VmObserved } from "./vm/plan";
export { planVm, preflightProblems, resolveHostDevices, specOf, structuralProblems } from "./vm/plan";
export type { StopReport } from "./qemu/lifecycle";
export { stopQemu } from "./qemu/lifecycle";

/**
 * Validate, expand devices to their groups (reading the host, changing nothing) and return the command line.
 * With unknown inputs (values computed in the same `up`) the host is not read and `commandLine` stays unknown.
 */
export async function check(olds: Record<string, any>, news: Record<string, any>, onHost?: Host): Promise<CheckResult<PassthroughVmInputs>> {
    const { inputs, failures } = validate<PassthroughVmInputs>("passthrough-vm.schema.json", news);
    if (typeof inputs.name === "string" && !isUnknown(inputs.name) && !VM_NAME.test(inputs.name)) {
        const i = failures.findIndex((f) => f.property === "name");
        const reason = `name ${JSON.stringify(inputs.name)} is not a VM name: letters, digits, '_', '.', '-', at most 64, starting with a letter or digit (it names /run/pulumi-vfio/vm/<name>)`;
        if (i >= 0) failures[i] = { property: "name", reason };
        else failures.push({ property: "name", reason });
    }
    if (failures.length) return { inputs, failures };
    delete inputs.commandLine;
    delete inputs.hostDevices;
    delete inputs.domainXml;
    const userInputs = { ...inputs };
    delete (userInputs as any).__provider;
    if (containsUnknown(userInputs)) return { inputs, failures };
    const { n, failures: problems } = safeNormalize(inputs);
    if (problems.length || !n) return { inputs, failures: problems };
    try {
        await withHost(
            inputs.connection,
            async (host) => {
                const { facts } = await readVmFacts(host, n, vmPaths(n.name));
                const hostDevices = resolveHostDevices(n.devices, facts);
                const spec = specOf(n, hostDevices);
                // What would fail at start and no other resource of this up can provide: refused at preview. A QEMU of
                // this VM that runs now gives its hugepages back before the new one starts.
                const running = facts.pidFilePid !== null && (facts.comm.get(facts.pidFilePid) ?? "").startsWith("qemu-system");
                // libvirt places the guest's PCI devices itself: our q35 layout's limits are the QEMU backend's.
                const layout = n.backend === "qemu" ? layoutProblems(spec) : [];
                failures.push(...structuralProblems(n, facts), ...envProblems(preflightWant(n), facts.env, running ? hugepagesHeldBy(olds) : 0), ...layout);
                if (layout.length) return;
                inputs.hostDevices = hostDevices;
                // What will run, for the preview: QEMU's argv, or the domain XML libvirt gets.
                inputs.commandLine = n.backend === "qemu" ? buildCommandLine(spec) : [];
                inputs.domainXml = n.backend === "libvirt" ? libvirt.domainXmlOf(n, hostDevices) : "";
            },
            onHost,
        );
    } catch (e) {
        failures.push({ property: "connection", reason: (e as Error).message });
    }
    return { inputs, failures };
}

/** The inputs that matter to the VM, canonical, for change detection. */
function canonical(i: PassthroughVmInputs): string {
    const c: any = { ...i };
    for (const k of ["connection", "__provider", "commandLine", "hostDevices", "status", "pid", "vcpuThreads", "missingDevices", "pinningOk", "runDir", "pidFile", "qmpSocket", "varsFile", "unit", "domainXml", "domainDrift"]) delete c[k];
    return JSON.stringify(normalizeForDiff(c));
}

function normalizeForDiff(i: PassthroughVmInputs): unknown {
    try {
        return normalize(i);
    } catch {
        return i;
    }
}

/**
 * Another name, host or backend → replace (the old VM is stopped first); anything else → update, which restarts
 * only when the command line (or domain XML) changed. Drift from refresh (VM dead, paused, devices gone, pinning
 * lost, a domain edited by hand) → update.
 */
export function diff(_id: string, olds: PassthroughVmOutputs, news: PassthroughVmInputs): { changes: boolean; replaces: string[]; deleteBeforeReplace: boolean } {
    const replaces: string[] = [];
    if (isUnknown(news.name) || news.name !== olds.name) replaces.push("name");
    if (containsUnknown(news.connection) || hostIdentity(news.connection) !== hostIdentity(olds.connection)) replaces.push("connection");
    if ((news.backend ?? dflt<string>("backend")) !== (olds.backend ?? "qemu")) replaces.push("backend");
    let changes = replaces.length > 0 || containsUnknown(news);
    if (!changes && canonical(news) !== canonical(olds)) changes = true;
    if (news.commandLine === undefined || JSON.stringify(news.commandLine) !== JSON.stringify(olds.commandLine)) changes = true;
    if ((news.domainXml ?? "") !== (olds.domainXml ?? "") || (olds.domainDrift ?? []).length > 0) changes = true;
    const wantRunning = news.running ?? dflt<boolean>("running");
    if (wantRunning && (olds.status !== "running" || (olds.missingDevices ?? []).length > 0 || olds.pinningOk === false)) changes = true;
    if (!wantRunning && olds.status !== "stopped") changes = true;
    return { changes, replaces, deleteBeforeReplace: true };
}


/** The backend module of a VM's inputs or outputs (outputs written before `backend` existed are QEMU's). */
const backendOf = (i: { backend?: string }) => (i.backend === "libvirt" ? libvirt : qemu);

export async function create(inputs: PassthroughVmInputs, onHost?: Host): Promise<{ id: string; outs: PassthroughVmOutputs }> {
    const outs = await withHost(inputs.connection, (host) => backendOf(inputs).converge(host, inputs), onHost);
    return { id: outs.name, outs };
}

export async function update(_id: string, olds: PassthroughVmOutputs, news: PassthroughVmInputs, onHost?: Host): Promise<{ outs: PassthroughVmOutputs }> {
    return { outs: await withHost(news.connection, (host) => backendOf(news).converge(host, news, olds), onHost) };
}

/** The VM as the host shows it. A dead or changed VM → drift. */
export async function read(id: string, props: PassthroughVmOutputs, onHost?: Host): Promise<{ id: string; props?: PassthroughVmOutputs }> {
    const n = normalize(props);
    return withHost(props.connection, async (host) => ({ id, props: await (props.backend === "libvirt" ? libvirt.read(host, props) : qemu.read(host, props, n)) }), onHost);
}

/** Stop gracefully, then remove what the backend made for the VM. */
export async function remove(_id: string, props: PassthroughVmOutputs, onHost?: Host): Promise<void> {
    await withHost(props.connection, (host) => backendOf(props).remove(host, props), onHost);
}

export const passthroughVm = { check, diff, create, read, update, delete: remove };
