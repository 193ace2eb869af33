/**
 * BootConfig: what happens on `pulumi preview` / `up` / `refresh` / `destroy` for "this host boots with these kernel
 * parameters, these devices claimed for vfio-pci by address, and these module options".
 *
 * - check: validate the inputs, read the host in one batch (boot loader, the running and configured command line,
 *   the files we own, each early-bound device's driver and host driver module) and refuse what cannot work (no known
 *   boot loader, a device missing, a host driver built into the kernel, `vfio-pci.ids=` that would also take a device
 *   the host uses, a local reboot). `plan` lists the exact lines that change in each file and whether a reboot is due.
 * - create/update: under the host lock, one stopOnError batch writes the files that differ, regenerates the
 *   initramfs when the early binding changed and the boot loader's configuration when the parameters changed, and
 *   reads the result back. Any failure puts every file back as it was (its content was read first) and regenerates
 *   again from those; the error names the command and what it printed. With `reboot: ifNeeded`, the host is
 *   rebooted, waited for over SSH and verified.
 * - read: the running command line, the configured one, the files' contents: drift for `up` to repair.
 * - delete: remove what we wrote, put back what we edited, regenerate.
 *
 * Each function takes an optional last `onHost` (tests: a fake or the lab's kernel).
 */
import { CheckFailure, CheckResult, DiffResult, containsUnknown, isUnknown, validate, withoutProvider } from "./check";
import { parameterProblem } from "./boot/cmdline";
import { CLAIM_SCRIPT, INITRAMFS_TOOLS_HOOK, MODULES_LOAD_CONF, chooseInitramfs, regenerateInitramfs } from "./boot/early";
import { readBootFacts, BootFacts } from "./boot/facts";
import { GRUBBY, GRUB_CFG, GRUB_DROPIN, GRUB_MKCONFIG, KERNEL_CMDLINE, UPDATE_GRUB, configuredParameters, renderKernelCmdline } from "./boot/loaders";
import { BootPlan, pendingReasons, planBoot, sdbootCommands } from "./boot/plan";
import { BOOT_ID, BootConfigInputs, BootConfigOutputs, OWNED, Settings, defaults } from "./boot/types";
import { hostIdentity } from "./host/ssh";
import { checkOnHost } from "./checkOnHost";
import { hostFor, withHost } from "./host";
import { Host, Op, OpResult } from "./host/types";

export type { BootConfigInputs, BootConfigOutputs, BootPrevious, ModuleSetting } from "./boot/types";
export { readBootFacts } from "./boot/facts";
export type { BootFacts } from "./boot/facts";
export { planBoot, fileLines, pendingReasons } from "./boot/plan";
export type { BootPlan } from "./boot/plan";

// ------------------------------------------------------------------------------------------------ check / diff

export async function check(olds: Record<string, any>, news: Record<string, any>, onHost?: Host): Promise<CheckResult<BootConfigInputs>> {
    const { inputs, failures: schemaFailures } = validate<BootConfigInputs>("boot-config.schema.json", news);
    // A parameter the pattern refuses gets a message that says what is wrong with it.
    const paramFailures: CheckFailure[] = [];
    (inputs.kernelParameters ?? []).forEach((p, i) => {
        if (typeof p !== "string" || isUnknown(p)) return;
        const why = parameterProblem(p);
        if (why) paramFailures.push({ property: "kernelParameters", reason: `kernelParameters[${i}]: ${why}` });
    });
    const failures = [...paramFailures, ...schemaFailures.filter((f) => !(paramFailures.length && f.property.startsWith("kernelParameters")))];
    if (failures.length) return { inputs, failures };
    if (containsUnknown(inputs)) {
        delete inputs.plan;
        return { inputs, failures: [] };
    }
    const s = defaults(inputs);
    const problems = await checkOnHost(inputs.connection, onHost, async (host) => {
        const plan = planBoot(s, await readBootFacts(host, s), { previous: olds?.previous, ours: oursOf(olds), local: !inputs.connection?.host });
        inputs.plan = plan.lines;
        return plan.problems;
    });
    return { inputs, failures: problems };
}

/** The parameters our earlier change added (taken off before predicting the new command line). */
function oursOf(olds: Record<string, any> | undefined): string[] {
    return Array.isArray(olds?.kernelParameters) ? olds!.kernelParameters : [];
}

export function diff(_id: string, olds: BootConfigOutputs, news: BootConfigInputs): DiffResult {
    const replaces: string[] = [];
    if (containsUnknown(news.connection) || hostIdentity(news.connection) !== hostIdentity(olds.connection)) replaces.push("connection");
    const n = defaults({ ...news, earlyBinding: (news.earlyBinding ?? []).filter((a) => !isUnknown(a)) });
    let changes = replaces.length > 0 || containsUnknown(news);
    for (const k of ["kernelParameters", "removeKernelParameters", "earlyBinding", "modules", "bootloader", "reboot", "rebootTimeout"] as const) {
        if (JSON.stringify(n[k]) !== JSON.stringify((olds as any)[k])) changes = true;
    }
    // Drift: a file of ours edited or removed by hand, or a reboot still due with reboot: ifNeeded.
    const drifted = Object.entries(olds.written ?? {}).some(([p, text]) => (olds.found ?? {})[p] !== text);
    if (drifted || (n.reboot === "ifNeeded" && olds.pendingReboot)) changes = true;
    return { changes, replaces, deleteBeforeReplace: true };
}

// ------------------------------------------------------------------------------------------------ apply

/** The error of a failed step: the command (or file) and what it printed. */
function stepError(op: Op, r: OpResult): string {
    if (op.op === "exec") {
        const out = [r.message, r.data].filter((x) => x && x.trim()).join(" | ").trim();
        return `\`${op.argv.join(" ")}\` failed (exit ${r.code ?? "?"})${out ? `: ${out.slice(0, 2000)}` : ""}`;
    }
    return `${op.op} ${"path" in op ? op.path : ""} failed${r.errno ? ` (${r.errno})` : ""}${r.message ? `: ${r.message}` : ""}`;
}

/** The ops that make the files as `plan.files` says, directories first. */
function fileOps(plan: BootPlan, f: BootFacts): Op[] {
    const ops: Op[] = [];
    const dirs = new Set<string>();
    for (const p of plan.changed) {
        const want = plan.files[p];
        if (want) dirs.add(p.slice(0, p.lastIndexOf("/")));
    }
    for (const d of [...dirs].sort()) ops.push({ op: "mkdir", path: d, mode: 0o755 });
    for (const p of plan.changed) {
        const want = plan.files[p];
        ops.push(want ? { op: "put", path: p, data: want.data, mode: want.mode } : { op: "remove", path: p });
    }
    void f;
    return ops;
}

/** Put back `before` (path → text, undefined: absent) and run `regenerate` again; returns what did not come back. */
async function restoreFiles(host: Host, before: Record<string, { text: string | undefined; mode: number }>, regenerate: string[][]): Promise<string[]> {
    const ops: Op[] = Object.entries(before).map(([path, b]): Op => (b.text === undefined ? { op: "remove", path, optional: true } : { op: "put", path, data: b.text, mode: b.mode, optional: true }));
    ops.push(...regenerate.map((argv): Op => ({ op: "exec", argv, optional: true })));
    const r = await host.run(ops);
    return r.flatMap((x, i) => (x.ok ? [] : [stepError(ops[i], x)]));
}

async function converge(host: Host, inputs: BootConfigInputs, olds?: BootConfigOutputs): Promise<BootConfigOutputs> {
    const s = defaults(inputs);
    const local = !inputs.connection?.host;
    const outs = await host.withLock(async (host) => {
        const facts = await readBootFacts(host, s);
        const plan = planBoot(s, facts, { previous: olds?.previous, ours: olds ? oursOf(olds) : [], local });
        if (plan.problems.length) throw new Error(plan.problems.map((p) => p.reason).join("; "));
        const loader = plan.loader!;
        const kernelCmdlineText = loader === "systemd-boot" ? (s.kernelParameters.length || s.removeKernelParameters.length ? renderKernelCmdline(plan.configured) : plan.previous.kernelCmdline ?? null) : undefined;

        const ops = fileOps(plan, facts);
        const before: Record<string, { text: string | undefined; mode: number }> = {};
        for (const p of plan.changed) before[p] = { text: facts.owned[p], mode: plan.files[p]?.mode ?? 0o644 };
        if (loader === "systemd-boot" && (kernelCmdlineText ?? undefined) !== facts.kernelCmdline) {
            before[KERNEL_CMDLINE] = { text: facts.kernelCmdline, mode: 0o644 };
            if (kernelCmdlineText !== null) ops.push({ op: "mkdir", path: "/etc/kernel", mode: 0o755 });
            ops.push(kernelCmdlineText === null ? { op: "remove", path: KERNEL_CMDLINE } : { op: "put", path: KERNEL_CMDLINE, data: kernelCmdlineText!, mode: 0o644 });
        }
        const cmdOps = plan.commands.map((argv): Op => ({ op: "exec", argv, timeoutMs: 600_000 }));
        if (ops.length + cmdOps.length) {
            const all = [...ops, ...cmdOps];
            const r = await host.run(all, { stopOnError: true });
            const bad = r.findIndex((x) => !x.ok && !x.skipped);
            if (bad >= 0) {
                // Put every file back and regenerate from them, so the next boot is the one the host had.
                const regen = plan.commands.filter((c) => c[0] !== GRUBBY);
                const left = await restoreFiles(host, before, regen);
                const restored = left.length ? ` Restoring failed too: ${left.join("; ")}; the files as they were: ${Object.keys(before).join(", ")}` : ` Every file was put back as it was (${Object.keys(before).join(", ") || "none had changed"}) and regenerated.`;
                throw new Error(`boot configuration not applied: ${stepError(all[bad], r[bad])}.${restored}`);
            }
        }
        return outputsFrom(host, inputs, s, plan);
    });
    if (s.reboot === "ifNeeded" && outs.pendingReboot) {
        // The reboot ends this host's connection without telling it (its TCP peer is gone until it answers with a
        // reset): drop it now, so the next operation on this host in the same program connects afresh.
        await host.close();
        return rebootAndVerify(inputs, s, outs);
    }
    return outs;
}

/** Read the host after a change (or at refresh) and make the outputs. */
async function outputsFrom(host: Host, inputs: BootConfigInputs, s: Settings, plan: BootPlan): Promise<BootConfigOutputs> {
    const after = await readBootFacts(host, s);
    const loader = plan.loader!;
    const configured = configuredParameters(loader, after) ?? plan.configured;
    const pending = pendingReasons(s, after, configured);
    const written = Object.fromEntries(Object.entries(plan.files).filter(([, v]) => v).map(([p, v]) => [p, v!.data]));
    return {
        ...withoutProvider(inputs),
        ...s,
        loader,
        initramfs: plan.initramfs,
        running: after.running,
        configured,
        pendingReboot: pending.length > 0,
        pending,
        hostModules: plan.hostModules,
        written,
        found: Object.fromEntries(Object.keys(written).map((p) => [p, after.owned[p] ?? ""])),
        previous: plan.previous,
        plan: plan.lines,
    };
}

/**
 * Reboot through SSH and wait for the host to come back with another boot id, then verify the running command line
 * and the early bindings. The old connection dies with the host: every probe uses a fresh one.
 */
async function rebootAndVerify(inputs: BootConfigInputs, s: Settings, outs: BootConfigOutputs): Promise<BootConfigOutputs> {
    const probe = async <T>(fn: (h: Host) => Promise<T>): Promise<T> => {
        const h = hostFor(inputs.connection);
        try {
            return await fn(h);
        } finally {
            await h.close().catch(() => undefined);
        }
    };
    const bootBefore = await probe(async (h) => ((await h.run([{ op: "read", path: BOOT_ID }]))[0].data ?? "").trim());
    await probe((h) => h.run([{ op: "exec", argv: ["systemctl", "reboot"], optional: true, timeoutMs: 20_000 }])).catch(() => undefined);
    const deadline = Date.now() + s.rebootTimeout * 1000;
    let facts: BootFacts | undefined;
    while (Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 3000));
        try {
            const f = await probe((h) => readBootFacts(h, s));
            if (f.bootId && f.bootId !== bootBefore) {
                facts = f;
                break;
            }
        } catch {
            // Not back yet.
        }
    }
    if (!facts) throw new Error(`rebooted ${inputs.connection?.host} but it did not come back within ${s.rebootTimeout} s (rebootTimeout); the configuration is written (pendingReboot) — check the host's console`);
    const pending = pendingReasons(s, facts, outs.configured);
    if (pending.length) throw new Error(`rebooted ${inputs.connection?.host}, but the running system does not have the configuration: ${pending.join("; ")}. /proc/cmdline: ${facts.running.join(" ")}`);
    return { ...outs, running: facts.running, pendingReboot: false, pending: [] };
}

export async function create(inputs: BootConfigInputs, onHost?: Host): Promise<{ id: string; outs: BootConfigOutputs }> {
    const outs = await withHost(inputs.connection, (host) => converge(host, inputs), onHost);
    return { id: "boot", outs };
}

export async function update(_id: string, olds: BootConfigOutputs, news: BootConfigInputs, onHost?: Host): Promise<{ outs: BootConfigOutputs }> {
    const outs = await withHost(news.connection, (host) => converge(host, news, olds), onHost);
    return { outs };
}

export async function read(id: string, props: BootConfigOutputs, onHost?: Host): Promise<{ id: string; props?: BootConfigOutputs }> {
    return withHost(
        props.connection,
        async (host) => {
            const s = defaults(props);
            const f = await readBootFacts(host, s);
            const loader = props.loader;
            const configured = configuredParameters(loader, f) ?? props.configured;
            const pending = pendingReasons(s, f, configured);
            const found = Object.fromEntries(Object.keys(props.written ?? {}).map((p) => [p, f.owned[p] ?? ""]));
            return { id, props: { ...props, running: f.running, configured, pendingReboot: pending.length > 0, pending, found } };
        },
        onHost,
    );
}

/** Remove what we wrote, put back what we edited, regenerate. A reboot then brings the host's own configuration back. */
export async function remove(_id: string, props: BootConfigOutputs, onHost?: Host): Promise<void> {
    await withHost(
        props.connection,
        (host) =>
            host.withLock(async (host) => {
                const s = defaults(props);
                const f = await readBootFacts(host, { ...s, earlyBinding: [], modules: [] });
                const ops: Op[] = [];
                const before: Record<string, { text: string | undefined; mode: number }> = {};
                let earlyFiles = false;
                for (const p of OWNED) {
                    if (f.owned[p] === undefined) continue;
                    before[p] = { text: f.owned[p], mode: p === CLAIM_SCRIPT || p === INITRAMFS_TOOLS_HOOK ? 0o755 : 0o644 };
                    ops.push({ op: "remove", path: p });
                    if (p !== GRUB_DROPIN && p !== MODULES_LOAD_CONF) earlyFiles = true;
                }
                const commands: string[][] = [];
                const initrd = regenerateInitramfs(chooseInitramfs(f.present));
                if (earlyFiles && initrd) commands.push(initrd);
                if (props.loader === "grub" && before[GRUB_DROPIN]) commands.push(f.present.has(UPDATE_GRUB) ? [UPDATE_GRUB] : [GRUB_MKCONFIG, "-o", GRUB_CFG]);
                if (props.loader === "grubby") {
                    if (s.kernelParameters.length) commands.push([GRUBBY, "--update-kernel=ALL", `--remove-args=${s.kernelParameters.join(" ")}`]);
                    if (props.previous?.grubbyTaken?.length) commands.push([GRUBBY, "--update-kernel=ALL", `--args=${props.previous.grubbyTaken.join(" ")}`]);
                }
                if (props.loader === "systemd-boot") {
                    const prev = props.previous?.kernelCmdline;
                    const cmdlineBack = prev !== undefined && (prev ?? undefined) !== f.kernelCmdline;
                    if (cmdlineBack) {
                        before[KERNEL_CMDLINE] = { text: f.kernelCmdline, mode: 0o644 };
                        ops.push(prev === null ? { op: "remove", path: KERNEL_CMDLINE } : { op: "put", path: KERNEL_CMDLINE, data: prev, mode: 0o644 });
                    }
                    commands.push(...sdbootCommands(f, cmdlineBack, !!(earlyFiles && initrd), chooseInitramfs(f.present)));
                }
                const all = [...ops, ...commands.map((argv): Op => ({ op: "exec", argv, timeoutMs: 600_000 }))];
                if (!all.length) return;
                const r = await host.run(all, { stopOnError: true });
                const bad = r.findIndex((x) => !x.ok && !x.skipped);
                if (bad >= 0) {
                    const left = await restoreFiles(host, before, commands.filter((c) => c[0] !== GRUBBY));
                    throw new Error(`removing the boot configuration failed: ${stepError(all[bad], r[bad])}.${left.length ? ` Restoring failed too: ${left.join("; ")}` : " Every file was put back; `pulumi destroy` can be run again."}`);
                }
            }),
        onHost,
    );
}

export const bootConfig = { check, diff, create, read, update, delete: remove };
