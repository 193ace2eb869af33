/**
 * The whole flow on a real kernel, as a user meets it: a host.yaml for the lab host (the GPU and its HDMI audio,
 * an mdev, SR-IOV VFs, a nested VM with a Looking Glass /dev/shm buffer) converged by the root program through the
 * real dynamic-provider plugin over SSH — the planned changes shown first — then the file changed (another mdev
 * type, more VM memory) and converged again, then every entry removed and the host compared with a full sysfs
 * snapshot taken before. State between runs is kept per resource (id, inputs, outputs) as Pulumi keeps it.
 *
 * Used by the lab test (tests/lab/wholeFlow.lab.test.ts) and by `npm run demo` (tests/demo/demo.ts).
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import type { LabHandle } from "../lab/lab";
import { PluginProcess, REPO, Step } from "../engine/harness";
import { ProgramEngine, declsOf, formatSteps } from "../engine/program";
import { runProgram } from "../programs/runProgram";

export const PROJECT = "pulumi-vfio-host";
const STACK = "lab";
export const SHM = "/dev/shm/looking-glass";

export interface FlowSettings {
    mdevType: string;
    memoryMb: number;
}

/** A host file's first lines for the lab host: the schema, its name and how to reach it. */
export function labHostYamlHead(lab: LabHandle): string[] {
    return [
        "# yaml-language-server: $schema=" + path.join(REPO, "schema", "host.schema.json"),
        "# The lab host: a QEMU q35 guest with an emulated IOMMU (tests/lab).",
        "name: lab",
        "connection:",
        `  host: ${lab.connection.host}`,
        `  port: ${lab.connection.port}`,
        "  user: root",
        `  privateKeyFile: ${lab.keyPath}`,
        `  hostKey: "${lab.connection.hostKey}"`,
    ];
}

/** The host file a user would write for the lab host; `settings` are what the second run changes. */
export function labHostYaml(lab: LabHandle, s: FlowSettings | null): string {
    const head = labHostYamlHead(lab);
    // Written empty, not left out: a host file with no section is refused as truncated.
    if (!s) return head.join("\n") + "\n# Nothing else: every resource goes.\nbindings: {}\nvms: {}\n";
    return [
        ...head,
        "bindings:",
        "  gpu:",
        '    device: "0000:01:00.0"        # bochs VGA; its HDMI-style audio 01:00.1 shares IOMMU group 7 and goes too',
        "virtualFunctions:",
        "  nvme:",
        '    physicalFunction: "0000:03:00.0"',
        "    count: 2",
        "mdevs:",
        "  serial:",
        "    parent: mtty",
        `    type: ${s.mdevType}`,
        "vms:",
        "  nested:",
        "    accel: tcg                    # no KVM inside the lab guest",
        "    cpu: { cores: 1 }",
        `    memoryMb: ${s.memoryMb}`,
        "    network: { mode: none }",
        "    shutdownTimeoutSeconds: 3     # no guest OS: powerdown is ignored, quit after 3 s",
        "    devices: [gpu]",
        "    virtualFunctions: [{ from: nvme, index: 0 }]",
        `    sharedMemory: { path: ${SHM}, sizeMb: 32 }`,
        "",
    ].join("\n");
}

/**
 * Everything a user would compare before and after, in one SSH call: every PCI device's driver, override and group,
 * SR-IOV state, mdevs and the instances left of each type, /dev/vfio, the Looking Glass buffer, nested QEMUs, and
 * the files pulumi-vfio may leave (driverctl, mdevctl, run and state dirs).
 */
const SNAPSHOT = `
cd /sys/bus/pci/devices
for d in *; do
  drv=$(readlink "$d/driver" 2>/dev/null); grp=$(readlink "$d/iommu_group" 2>/dev/null)
  printf '%s driver=%s override=%s group=%s\\n' "$d" "\${drv##*/}" "$(cat "$d/driver_override" 2>/dev/null)" "\${grp##*/}"
  if [ -e "$d/sriov_numvfs" ]; then printf '%s sriov_numvfs=%s autoprobe=%s\\n' "$d" "$(cat "$d/sriov_numvfs")" "$(cat "$d/sriov_drivers_autoprobe")"; fi
done
echo "mdevs: $(ls /sys/bus/mdev/devices 2>/dev/null | tr '\\n' ' ')"
for t in /sys/class/mdev_bus/*/mdev_supported_types/*; do echo "$t available=$(cat "$t/available_instances")"; done
echo "vfio: $(ls /dev/vfio | tr '\\n' ' ')"
for f in /dev/shm/*; do [ -e "$f" ] && echo "shm: $f $(stat -c %s "$f")"; done
echo "qemu: $(pgrep -c -f '^qemu-system' || true)"
for f in /etc/driverctl.d /etc/mdevctl.d /run/pulumi-vfio /var/lib/pulumi-vfio /etc/systemd/system/pulumi-vfio-vm-*; do [ -e "$f" ] && find "$f" | sort; done
true
`;

export async function snapshot(lab: LabHandle): Promise<string> {
    const r = await lab.ssh(["sh", "-c", SNAPSHOT]);
    if (r.code !== 0) throw new Error(`snapshot failed (${r.code}): ${r.stderr}`);
    return r.stdout;
}

export interface Phase {
    name: string;
    ms: number;
    steps: Step[];
    /** `pulumi preview`-like text of the steps. */
    text: string;
}

/**
 * What the last run leaves that was not there before, known and reported (issue 5): PassthroughVm's delete leaves
 * QEMU's shared-memory file (32 MiB of the host's RAM in /dev/shm) and the emptied parents of its run and state
 * directories. Remove an entry here once it is fixed.
 */
export const KNOWN_LEFTOVERS = [`shm: ${SHM} ${32 * 1024 * 1024}`, "/run/pulumi-vfio", "/run/pulumi-vfio/vm", "/var/lib/pulumi-vfio", "/var/lib/pulumi-vfio/vm"];

/** Lines of `after` not in `before` (extra) and of `before` not in `after` (missing). */
export function compareSnapshots(before: string, after: string): { extra: string[]; missing: string[] } {
    const a = before.split("\n").filter(Boolean);
    const b = after.split("\n").filter(Boolean);
    return { extra: b.filter((l) => !a.includes(l)), missing: a.filter((l) => !b.includes(l)) };
}

/** Remove the known leftovers (only those the run made), so the lab host is clean for whatever runs next. */
export async function removeKnownLeftovers(lab: LabHandle, extra: string[]): Promise<void> {
    const known = extra.filter((l) => KNOWN_LEFTOVERS.includes(l));
    if (!known.length) return;
    const shm = known.some((l) => l.startsWith("shm: ")) ? [SHM] : [];
    const dirs = known.filter((l) => l.startsWith("/")).sort().reverse();
    await lab.ssh(["sh", "-c", 'for f in "$@"; do if [ -d "$f" ]; then rmdir "$f"; else rm -f "$f"; fi; done', "sh", ...shm, ...dirs]);
}

export interface FlowRun {
    before: string;
    after: string;
    phases: Phase[];
    /** Facts read on the host after each up. */
    observed: Record<string, Record<string, string>>;
}

async function sh(lab: LabHandle, script: string): Promise<string> {
    const r = await lab.ssh(["sh", "-c", script]);
    return r.stdout.trim();
}

/** What a user checks after an up: the drivers, the VFs, the mdev and its type, the nested QEMU and its memory. */
async function observe(lab: LabHandle): Promise<Record<string, string>> {
    const out = await sh(
        lab,
        `d=/sys/bus/pci/devices
echo "gpu=$(basename $(readlink $d/0000:01:00.0/driver))"
echo "audio=$(basename $(readlink $d/0000:01:00.1/driver))"
echo "numvfs=$(cat $d/0000:03:00.0/sriov_numvfs)"
echo "vf0=$(basename $(readlink $d/0000:03:00.1/driver) 2>/dev/null)"
echo "vf1=$(basename $(readlink $d/0000:03:00.2/driver 2>/dev/null) 2>/dev/null)"
for m in /sys/bus/mdev/devices/*; do echo "mdev=$(basename $(readlink $m/mdev_type))"; done
p=$(pgrep -f '^qemu-system' | head -1); echo "qemu=$p"
[ -n "$p" ] && echo "memory=$(tr '\\0' ' ' < /proc/$p/cmdline | grep -o -- '-m [^ ]*' | head -1)"
[ -n "$p" ] && echo "holds=$(ls -l /proc/$p/fd | grep -o '/dev/vfio/[0-9][0-9]*\\|${SHM}' | sort -u | tr '\\n' ' ')"
echo "shm=$(stat -c %s ${SHM} 2>/dev/null)"`,
    );
    return Object.fromEntries(out.split("\n").filter((l) => l.includes("=")).map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1).trim()]));
}

/**
 * Run the flow against a booted lab. `log` gets the preview texts and progress as a user would see them.
 * `main` is the root program to run (source under jest, compiled under `npm run demo`).
 */
export async function runWholeFlow(lab: LabHandle, opts: { main: string; log: (line: string) => void }): Promise<FlowRun> {
    const { log } = opts;
    const project = fs.mkdtempSync(path.join(os.tmpdir(), "pv-flow-"));
    const hostFile = path.join(project, "host.yaml");
    const phases: Phase[] = [];
    const observed: FlowRun["observed"] = {};
    const plugin = await PluginProcess.start();
    const engine = new ProgramEngine(plugin, STACK, PROJECT);
    // The root program gives every resource the file's connection with the key file read (a secret in state).
    const connection = { host: lab.connection.host, port: lab.connection.port, user: "root", privateKey: fs.readFileSync(lab.keyPath, "utf8"), hostKey: lab.connection.hostKey };

    const program = async (settings: FlowSettings | null) => {
        fs.writeFileSync(hostFile, labHostYaml(lab, settings));
        const run = await runProgram(project, { project: PROJECT, stack: STACK, main: opts.main, config: { hostFile: "host.yaml" } });
        return declsOf(run.hosts[0].plan, connection);
    };
    const phase = async (name: string, f: () => Promise<Step[]>) => {
        const t0 = Date.now();
        const steps = await f();
        const p: Phase = { name, ms: Date.now() - t0, steps, text: formatSteps(steps) };
        phases.push(p);
        log(`\n== ${name} (${(p.ms / 1000).toFixed(1)} s)\n${p.text}`);
        return p;
    };

    try {
        const before = await snapshot(lab);
        const first = { mdevType: "mtty-1", memoryMb: 256 };
        log(`host.yaml:\n${labHostYaml(lab, first)}`);
        let decls = await program(first);
        await phase("preview (nothing changes yet)", () => engine.previewProgram(decls));
        observed.afterPreview = { unchanged: String((await snapshot(lab)) === before) };
        await phase("up", () => engine.upProgram(decls));
        observed.afterUp = await observe(lab);
        log(`host now: ${JSON.stringify(observed.afterUp)}`);
        await phase("up again (nothing to do)", () => engine.upProgram(decls));

        const second = { mdevType: "mtty-2", memoryMb: 384 };
        log(`\nhost.yaml changed: mdevs.serial.type mtty-1 -> mtty-2, vms.nested.memoryMb 256 -> 384`);
        decls = await program(second);
        await phase("preview of the change", () => engine.previewProgram(decls));
        await phase("up with the change", () => engine.upProgram(decls));
        observed.afterChange = await observe(lab);
        log(`host now: ${JSON.stringify(observed.afterChange)}`);

        log(`\nhost.yaml emptied: every entry removed`);
        decls = await program(null);
        await phase("preview of the removal", () => engine.previewProgram(decls));
        await phase("up: everything removed, the VM first", () => engine.upProgram(decls));
        const after = await snapshot(lab);
        return { before, after, phases, observed };
    } finally {
        // Whatever failed: leave no resource behind on the lab host.
        if (engine.state.length) await engine.destroy().catch((e) => log(`cleanup: ${(e as Error).message}`));
        await plugin.stop();
        fs.rmSync(project, { recursive: true, force: true });
    }
}
