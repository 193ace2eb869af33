/**
 * The `pulumi-vfio` command line as a user meets it, in-process through `main(argv, io)` against the fake lab
 * machine: the conventions (--version, help <command>, `-o -`, warnings on stderr), `init` writing into a
 * directory that does not exist yet with paths that load from there, `validate` offline, `status`, and `release`.
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { utils as sshUtils } from "ssh2";
import { FakeHost, FakeKernel, fakeKernelWithoutIommu, fakeLabKernel } from "../fake";
import { installKvmfr } from "../fake/kvmfr";
import { Connection } from "../../provider/host/ssh";
import { Host } from "../../provider/host/types";
import { CliIO, COMMANDS, keyFileReference, main, schemaReference } from "../../provider/cli";
import { packageRoot } from "../../provider/check";
import * as binding from "../../provider/iommuBinding";
import * as kvmfrDevice from "../../provider/kvmfrDevice";
import * as vm from "../../provider/passthroughVm";
import { mdevctlConfig } from "../../provider/sysfs/mdev";
import { HostStatus } from "../../provider/hostStatus";
import { loadHostDefinition, parseHostDefinition } from "../../sdk/hostDefinition";

const GPU = "0000:01:00.0";
const AUDIO = "0000:01:00.1";
const EDU = "0000:02:00.0";
const MDEV_UUID = "8a2e1f5c-3b4d-4c6e-9f70-1a2b3c4d5e6f";

interface Seen {
    stdout: string;
    stderr: string;
    hosts: { connection?: Connection; privileged?: boolean }[];
    files: Record<string, string>;
}

/** An io over `host` with files in memory (unless the test replaces readFile/writeFile). */
function cli(host: Host | undefined, files: Record<string, string> = {}, env: NodeJS.ProcessEnv = {}): { io: CliIO; seen: Seen } {
    const seen: Seen = { stdout: "", stderr: "", hosts: [], files: { ...files } };
    const io: CliIO = {
        stdout: (t) => (seen.stdout += t),
        stderr: (t) => (seen.stderr += t),
        host: (connection, privileged) => {
            seen.hosts.push({ connection, privileged });
            if (!host) throw new Error("this command must not touch a host");
            return host;
        },
        readFile: (p) => {
            if (!(p in seen.files)) throw Object.assign(new Error(`ENOENT: no such file or directory, open '${p}'`), { code: "ENOENT" });
            return seen.files[p];
        },
        writeFile: (p, text, overwrite) => {
            if (p in seen.files && !overwrite) throw Object.assign(new Error("EEXIST"), { code: "EEXIST" });
            seen.files[p] = text;
        },
        env,
    };
    return { io, seen };
}

const driverOf = (k: FakeKernel, a: string) => {
    try {
        return path.basename(k.readlink(`/sys/bus/pci/devices/${a}/driver`));
    } catch {
        return null;
    }
};
const overrideOf = (k: FakeKernel, a: string) => k.read(`/sys/bus/pci/devices/${a}/driver_override`).trim();

async function bindGroup7(host: Host, persistent = false) {
    const c = await binding.check({}, { device: GPU, persistent }, host);
    expect(c.failures).toEqual([]);
    return (await binding.create(c.inputs, host)).outs;
}

async function startVm(host: Host) {
    const c = await vm.check({}, { name: "gpu-vm", accel: "tcg", memoryMb: 256, network: { mode: "none" }, shutdownTimeoutSeconds: 0, devices: [GPU] }, host);
    expect(c.failures).toEqual([]);
    return (await vm.create(c.inputs, host)).outs;
}

// ------------------------------------------------------------------------------------------------ conventions

describe("conventions", () => {
    test("--version prints the version from package.json", async () => {
        const { io, seen } = cli(undefined);
        expect(await main(["--version"], io)).toBe(0);
        const pkg = JSON.parse(fs.readFileSync(path.join(packageRoot(), "package.json"), "utf8"));
        expect(seen.stdout).toBe(`pulumi-vfio ${pkg.version}\n`);
        expect(seen.stderr).toBe("");
    });

    test.each(Object.keys(COMMANDS))("`help %s` prints exactly what `%s --help` prints", async (name) => {
        const a = cli(undefined);
        const b = cli(undefined);
        expect(await main(["help", name], a.io)).toBe(0);
        expect(await main([name, "--help"], b.io)).toBe(0);
        expect(a.seen.stdout).toBe(b.seen.stdout);
        expect(a.seen.stdout).toMatch(new RegExp(`^usage: pulumi-vfio ${name} `));
    });

    test("`help` alone lists every command; `help` of an unknown command is a usage error", async () => {
        const a = cli(undefined);
        expect(await main(["help"], a.io)).toBe(0);
        const h = cli(undefined);
        expect(await main(["help", "--help"], h.io)).toBe(0);
        expect(h.seen.stdout).toBe(a.seen.stdout);
        for (const name of ["inventory", "init", "validate", "status", "release"]) expect(a.seen.stdout).toMatch(new RegExp(`^  ${name} `, "m"));
        const b = cli(undefined);
        expect(await main(["help", "relase"], b.io)).toBe(2);
        expect(b.seen.stderr).toContain('unknown command "relase"');
        expect(b.seen.stdout).toBe("");
    });

    test.each([
        [["validate"], /missing FILE/],
        [["release"], /missing ADDRESS/],
        [["release", GPU, AUDIO], /Unexpected argument '0000:01:00.1'/],
        [["status", "extra"], /Unexpected argument 'extra'/],
        [["release", "0000:01:00.0/../../x"], /is not a PCI address: write it as DDDD:BB:DD.F/],
        [["release", "1:0.0"], /is not a PCI address/],
    ])("usage error %j exits 2 with the command's usage, before any host is touched", async (argv, message) => {
        const { io, seen } = cli(undefined);
        expect(await main(argv as string[], io)).toBe(2);
        expect(seen.stderr).toMatch(message);
        expect(seen.stderr).toMatch(/usage: pulumi-vfio /);
        expect(seen.hosts).toEqual([]);
    });
});

test("inventory --json with the IOMMU off: stdout is only the JSON, the fix goes to stderr as a warning", async () => {
    const { io, seen } = cli(new FakeHost(fakeKernelWithoutIommu()));
    expect(await main(["inventory", "--json"], io)).toBe(0);
    expect(JSON.parse(seen.stdout).iommu.enabled).toBe(false);
    expect(seen.stderr).toMatch(/^pulumi-vfio inventory: warning: the IOMMU is off on this host .*intel_iommu=on.*\n$/);
});

// ------------------------------------------------------------------------------------------------ init

describe("pulumi-vfio init", () => {
    test("-o - prints the file on stdout; a warning (IOMMU off) goes to stderr, never into the YAML", async () => {
        const { io, seen } = cli(new FakeHost(fakeKernelWithoutIommu()));
        expect(await main(["init", "-o", "-"], io)).toBe(0);
        expect(seen.files).toEqual({});
        expect(seen.stdout.split("\n")[0]).toMatch(/^# yaml-language-server: \$schema=/);
        expect(() => parseHostDefinition(seen.stdout, { file: "host.yaml" })).not.toThrow();
        expect(seen.stdout).not.toContain("warning:");
        expect(seen.stderr).toMatch(/^pulumi-vfio init: warning: the IOMMU is off on this host .*intel_iommu=on/);
        expect(seen.stderr).not.toContain("wrote");
    });

    test("--force with -o - is a usage error (nothing to overwrite)", async () => {
        const { io, seen } = cli(new FakeHost(fakeLabKernel()));
        expect(await main(["init", "-o", "-", "--force"], io)).toBe(2);
        expect(seen.stderr).toContain("--force needs -o FILE");
    });

    test("-o hosts/lab/gpu-box.yaml in a fresh project creates the directories; $schema and privateKeyFile load from the file's directory", async () => {
        const project = fs.mkdtempSync(path.join(os.tmpdir(), "pv-init-project-"));
        try {
            // The project has the package installed where npm puts it.
            const installed = path.join(project, "node_modules", "pulumi-vfio", "schema");
            fs.mkdirSync(installed, { recursive: true });
            fs.copyFileSync(path.join(packageRoot(), "schema", "host.schema.json"), path.join(installed, "host.schema.json"));
            fs.mkdirSync(path.join(project, "keys"));
            fs.writeFileSync(path.join(project, "keys", "lab_ed25519"), sshUtils.generateKeyPairSync("ed25519").private, { mode: 0o600 });

            // A process whose working directory is the project, writing with the CLI's own file writer.
            const { io, seen } = cli(new FakeHost(fakeLabKernel()), {}, { SSH_AUTH_SOCK: "/nonexistent" });
            io.cwd = project;
            io.readFile = (p) => fs.readFileSync(path.resolve(project, p), "utf8");
            delete io.writeFile;
            const inProject = (argv: string[]) => {
                const cwd = process.cwd();
                process.chdir(project);
                return main(argv, io).finally(() => process.chdir(cwd));
            };
            expect(await inProject(["init", "--ssh", "root@gpu-box.lan", "-i", "keys/lab_ed25519", "-o", "hosts/lab/gpu-box.yaml"])).toBe(0);
            expect(seen.stderr).toBe("wrote hosts/lab/gpu-box.yaml: uncomment what this host should have, then `pulumi preview`\n");

            const file = path.join(project, "hosts", "lab", "gpu-box.yaml");
            const text = fs.readFileSync(file, "utf8");
            expect(text.split("\n")[0]).toBe("# yaml-language-server: $schema=../../node_modules/pulumi-vfio/schema/host.schema.json");
            expect(text).toContain('  privateKeyFile: "../../keys/lab_ed25519"\n');
            // What editors and the loader make of them, from the file's directory.
            const schema = /\$schema=(\S+)/.exec(text)![1];
            expect(fs.existsSync(path.resolve(path.dirname(file), schema))).toBe(true);
            const def = loadHostDefinition(file);
            expect(def).toMatchObject({ name: "gpu-box", connection: { host: "gpu-box.lan", user: "root", privateKeyFile: path.join(project, "keys", "lab_ed25519") } });
            expect(fs.statSync(path.join(project, "hosts", "lab")).isDirectory()).toBe(true);
            expect(fs.statSync(file).mode & 0o777).toBe(0o644);
        } finally {
            fs.rmSync(project, { recursive: true, force: true });
        }
    });

    test("-o into a path whose directory is a file fails naming it, not as \"exists\"", async () => {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), "pv-init-file-"));
        try {
            fs.writeFileSync(path.join(dir, "hosts"), "");
            const { io, seen } = cli(new FakeHost(fakeLabKernel()));
            delete io.writeFile;
            expect(await main(["init", "-o", path.join(dir, "hosts", "a.yaml")], io)).toBe(1);
            expect(seen.stderr).toBe(`pulumi-vfio init: error: cannot write ${path.join(dir, "hosts", "a.yaml")} (ENOTDIR)\n`);
        } finally {
            fs.rmSync(dir, { recursive: true });
        }
    });

    test("printed (-o -), the paths are relative to the working directory the user saves it in", async () => {
        const { io, seen } = cli(new FakeHost(fakeLabKernel()), { "keys/lab": sshUtils.generateKeyPairSync("ed25519").private });
        io.cwd = packageRoot();
        expect(await main(["init", "--ssh", "gpu-box.lan", "-i", "keys/lab", "-o", "-"], io)).toBe(0);
        expect(seen.stdout.split("\n")[0]).toBe("# yaml-language-server: $schema=./node_modules/pulumi-vfio/schema/host.schema.json");
        expect(seen.stdout).toContain('  privateKeyFile: "keys/lab"\n');
    });

    describe.each([
        // identity, cwd, the host file's directory, home → privateKeyFile
        ["keys/id", "/srv/fleet", "/srv/fleet/hosts/lab", "/home/me", "../../keys/id"],
        ["id", "/srv/fleet/hosts", "/srv/fleet/hosts", "/home/me", "id"],
        ["/home/me/.ssh/id_ed25519", "/srv/fleet", "/srv/fleet/hosts", "/home/me", "~/.ssh/id_ed25519"],
        ["~/.ssh/id_ed25519", "/srv/fleet", "/srv/fleet/hosts", "/home/me", "~/.ssh/id_ed25519"],
        ["/etc/pulumi/id", "/srv/fleet", "/srv/fleet/hosts", "/home/me", "/etc/pulumi/id"],
    ])("keyFileReference(%j) from %s into %s", (identity, cwd, baseDir, home, expected) => {
        test(`is ${expected}, which the loader resolves to the key given`, () => {
            const ref = keyFileReference(identity, cwd, baseDir, home);
            expect(ref).toBe(expected);
            const given = identity.startsWith("~/") ? path.join(home, identity.slice(2)) : path.resolve(cwd, identity);
            const loaded = ref.startsWith("~/") ? path.join(home, ref.slice(2)) : path.resolve(baseDir, ref);
            expect(loaded).toBe(given);
        });
    });

    test("schemaReference: a given relative path is rewritten relative to the file; URLs and absolute paths are kept", () => {
        expect(schemaReference("schema/host.schema.json", "/srv/p", "/srv/p/hosts")).toBe("../schema/host.schema.json");
        expect(schemaReference("https://example.com/host.schema.json", "/srv/p", "/srv/p/hosts")).toBe("https://example.com/host.schema.json");
        expect(schemaReference("/opt/s.json", "/srv/p", "/srv/p/hosts")).toBe("/opt/s.json");
        // No installed copy above the file and outside this package: this package's schema, absolutely.
        const outside = fs.mkdtempSync(path.join(os.tmpdir(), "pv-schema-"));
        try {
            expect(schemaReference(undefined, outside, outside)).toBe(path.join(packageRoot(), "schema", "host.schema.json"));
        } finally {
            fs.rmSync(outside, { recursive: true });
        }
    });
});

// ------------------------------------------------------------------------------------------------ validate

describe("pulumi-vfio validate", () => {
    const GOOD = 'name: rig\nbindings:\n  gpu: { device: "0000:01:00.0" }\nmdevs:\n  m: { parent: mtty, type: mtty-1 }\nvms:\n  a: { devices: [gpu], mdevs: [m] }\n';
    const BAD = 'bindings:\n  gpu: { device: "0000:01:00.0", persistant: true }\nvms:\n  a: { memoryMb: lots }\n';

    test("a valid file: exit 0 and one summary line; no host is touched", async () => {
        const { io, seen } = cli(undefined, { "hosts/rig.yaml": GOOD });
        expect(await main(["validate", "hosts/rig.yaml"], io)).toBe(0);
        expect(seen.stdout).toBe('hosts/rig.yaml: valid: host "rig" (this machine): 1 binding, 1 mdev, 1 VM\n');
        expect(seen.stderr).toBe("");
        expect(seen.hosts).toEqual([]);
    });

    test("problems: every one as FILE:LINE:COLUMN on stdout, a count on stderr, exit 1", async () => {
        const { io, seen } = cli(undefined, { "host.yaml": BAD });
        expect(await main(["validate", "host.yaml"], io)).toBe(1);
        const out = seen.stdout.trimEnd().split("\n");
        expect(out.length).toBeGreaterThanOrEqual(2);
        for (const l of out) expect(l).toMatch(/^host\.yaml:\d+:\d+: /);
        expect(seen.stdout).toMatch(/^host\.yaml:2:\d+: bindings\.gpu\.persistant: unknown key "persistant"; did you mean "persistent"\?/m);
        expect(seen.stdout).toMatch(/^host\.yaml:4:\d+: vms\.a\.memoryMb: must be an integer, not "lots"/m);
        expect(seen.stderr).toBe(`pulumi-vfio validate: host.yaml: ${out.length} problems\n`);
        expect(seen.hosts).toEqual([]);
    });

    test("several files: each is checked; one bad or missing file makes the exit status 1", async () => {
        const { io, seen } = cli(undefined, { "a.yaml": GOOD, "b.yaml": BAD });
        expect(await main(["validate", "a.yaml", "b.yaml", "c.yaml"], io)).toBe(1);
        expect(seen.stdout).toMatch(/^a\.yaml: valid: /m);
        expect(seen.stdout).toMatch(/^b\.yaml:2:/m);
        expect(seen.stderr).toContain("pulumi-vfio validate: error: cannot read c.yaml: it does not exist\n");
    });

    test("the file init writes validates", async () => {
        const first = cli(new FakeHost(fakeLabKernel()));
        expect(await main(["init"], first.io)).toBe(0);
        const { io, seen } = cli(undefined, { "host.yaml": first.seen.stdout });
        expect(await main(["validate", "host.yaml"], io)).toBe(0);
        expect(seen.stdout).toBe('host.yaml: valid: host "host" (this machine): nothing to converge (every entry is commented out)\n');
    });
});

// ------------------------------------------------------------------------------------------------ status

describe("pulumi-vfio status", () => {
    test("a host as booted: nothing taken, every section says none, three round trips at most, read without privilege", async () => {
        const host = new FakeHost(fakeLabKernel());
        const { io, seen } = cli(host);
        expect(await main(["status"], io)).toBe(0);
        expect(seen.hosts).toEqual([{ connection: undefined, privileged: false }]);
        expect(host.roundTrips).toBeLessThanOrEqual(3);
        expect(seen.stdout).toMatch(/devices taken from the host drivers .*:\n  none\n/);
        expect(seen.stdout).toMatch(/mdevs:\n  none\n/);
        expect(seen.stdout).toMatch(/QEMU VMs \(PassthroughVm\):\n  none\n/);
        expect(seen.stdout).not.toContain(GPU);
    });

    test("lists the bound group with its holder, the mdev with its mdevctl file, the VFs, kvmfr, the driverctl files and the VM", async () => {
        const k = fakeLabKernel();
        installKvmfr(k);
        const host = new FakeHost(k);
        await bindGroup7(host, true);
        const kc = await kvmfrDevice.check({}, { index: 0, sizeMb: 32 }, host);
        expect(kc.failures).toEqual([]);
        await kvmfrDevice.create(kc.inputs, host);
        k.write("/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-1/create", MDEV_UUID);
        k.mkdir("/etc/mdevctl.d/mtty");
        k.put(`/etc/mdevctl.d/mtty/${MDEV_UUID}`, mdevctlConfig("mtty-1", []), 0o644);
        k.write("/sys/bus/pci/devices/0000:03:00.0/sriov_drivers_autoprobe", "0");
        k.write("/sys/bus/pci/devices/0000:03:00.0/sriov_numvfs", "2");
        const vmOuts = await startVm(host);

        const before = host.roundTrips;
        const { io, seen } = cli(host);
        expect(await main(["status"], io)).toBe(0);
        expect(host.roundTrips - before).toBeLessThanOrEqual(3);
        const out = seen.stdout;
        const line = (s: string) => out.split("\n").find((l) => l.includes(s)) ?? "";
        expect(line(`${GPU}  VGA controller [1234:1111]`)).toMatch(new RegExp(`driver vfio-pci +override vfio-pci +group 7 +held by PID ${vmOuts.pid} \\(qemu-system-x86\\)`));
        expect(line(`${AUDIO}  Audio device [8086:2668]`)).toMatch(/driver vfio-pci +override vfio-pci +group 7/);
        expect(line("/dev/vfio/7")).toContain(`held by PID ${vmOuts.pid} (qemu-system-x86)`);
        expect(line(MDEV_UUID)).toMatch(/mtty +mtty-1 +.*mdevctl auto/);
        expect(line("0000:03:00.0  2/4 VFs")).toContain("0000:03:00.1 0000:03:00.2");
        expect(line("/dev/kvmfr0")).toMatch(/character device +32 MiB/);
        expect(line(`/etc/driverctl.d/pci-${GPU}`)).toMatch(/vfio-pci +driverctl format/);
        expect(line(`/etc/mdevctl.d/mtty/${MDEV_UUID}`)).toContain("mdev_type mtty-1, start auto");
        expect(line("/etc/modprobe.d/kvmfr.conf")).toMatch(/options kvmfr static_size_mb=32 +written by pulumi-vfio/);
        expect(line("gpu-vm")).toMatch(new RegExp(`running, PID ${vmOuts.pid}`));
        // Not taken: the host's own devices stay out of the list.
        expect(out).not.toContain("0000:00:1f.2");
        expect(out).not.toContain(EDU);
        expect(seen.stderr).toBe("");

        const json = cli(host);
        expect(await main(["status", "--json"], json.io)).toBe(0);
        const s = JSON.parse(json.seen.stdout) as HostStatus;
        expect(s.devices.map((d) => [d.address, d.driver, d.override, d.group])).toEqual([
            [GPU, "vfio-pci", "vfio-pci", 7],
            [AUDIO, "vfio-pci", "vfio-pci", 7],
        ]);
        expect(s.mdevs).toEqual([{ uuid: MDEV_UUID, parent: "mtty", type: "mtty-1", group: expect.any(Number), config: { path: `/etc/mdevctl.d/mtty/${MDEV_UUID}`, start: "auto" } }]);
        // The mdev has a group node of its own, which nobody holds.
        expect(s.vfioGroups).toEqual([
            { group: 7, path: "/dev/vfio/7", holders: [{ pid: vmOuts.pid, command: "qemu-system-x86" }] },
            { group: s.mdevs[0].group, path: `/dev/vfio/${s.mdevs[0].group}`, holders: [] },
        ]);
        expect(s.pfs).toEqual([{ address: "0000:03:00.0", driver: "nvme", numVfs: 2, totalVfs: 4, vfs: ["0000:03:00.1", "0000:03:00.2"] }]);
        expect(s.vms).toEqual([{ name: "gpu-vm", pid: vmOuts.pid, running: true, command: "qemu-system-x86", unit: null }]);
    });

    test("a VM whose QEMU died shows its stale pidfile as not running", async () => {
        const k = fakeLabKernel();
        const host = new FakeHost(k);
        await bindGroup7(host);
        const outs = await startVm(host);
        const { crashVm } = await import("../fake/qemu");
        crashVm(k, outs.pid!);
        const { io, seen } = cli(host);
        expect(await main(["status"], io)).toBe(0);
        expect(seen.stdout).toMatch(new RegExp(`gpu-vm +not running \\(stale pidfile, PID ${outs.pid}\\)`));
        expect(seen.stdout).toMatch(/\/dev\/vfio\/7 +not open/);
    });
});

// ------------------------------------------------------------------------------------------------ release

describe("pulumi-vfio release", () => {
    test("--group gives the GPU back to bochs-drm and its audio to snd_hda_intel, removes the driverctl files, says where each went", async () => {
        const k = fakeLabKernel();
        const host = new FakeHost(k);
        await bindGroup7(host, true);
        expect(k.state.files[`/etc/driverctl.d/pci-${GPU}`]).toBeDefined();
        // The Pulumi state is lost: only the host remembers.
        const { io, seen } = cli(new FakeHost(k));
        expect(await main(["release", "01:00.0", "--group"], io)).toBe(0);
        expect(seen.hosts).toEqual([{ connection: undefined, privileged: true }]);
        expect(seen.stdout).toBe(
            `${GPU} (VGA controller [1234:1111]): vfio-pci (override vfio-pci) → bochs-drm\n` + `${AUDIO} (Audio device [8086:2668]): vfio-pci (override vfio-pci) → snd_hda_intel\n`,
        );
        expect(seen.stderr).toBe("");
        expect([driverOf(k, GPU), driverOf(k, AUDIO)]).toEqual(["bochs-drm", "snd_hda_intel"]);
        expect([overrideOf(k, GPU), overrideOf(k, AUDIO)]).toEqual(["(null)", "(null)"]);
        expect(k.state.files[`/etc/driverctl.d/pci-${GPU}`]).toBeUndefined();
        expect(k.state.files[`/etc/driverctl.d/pci-${AUDIO}`]).toBeUndefined();
        expect(k.list("/dev/vfio")).not.toContain("7");
    });

    test("without --group only the device named is released", async () => {
        const k = fakeLabKernel();
        await bindGroup7(new FakeHost(k));
        const { io, seen } = cli(new FakeHost(k));
        expect(await main(["release", AUDIO], io)).toBe(0);
        expect(seen.stdout).toBe(`${AUDIO} (Audio device [8086:2668]): vfio-pci (override vfio-pci) → snd_hda_intel\n`);
        expect([driverOf(k, GPU), driverOf(k, AUDIO)]).toEqual(["vfio-pci", "snd_hda_intel"]);
    });

    test("refused while a VM holds /dev/vfio/7, naming the PID and command; nothing changes", async () => {
        const k = fakeLabKernel();
        const host = new FakeHost(k);
        await bindGroup7(host);
        const outs = await startVm(host);
        const { io, seen } = cli(new FakeHost(k));
        expect(await main(["release", GPU, "--group"], io)).toBe(1);
        expect(seen.stderr).toBe(
            `pulumi-vfio release: error: refusing to release IOMMU group 7: /dev/vfio/7 is held open by PID ${outs.pid} (qemu-system-x86). Stop the VM first; unbinding now would block in the kernel until it exits\n`,
        );
        expect(seen.stdout).toBe("");
        expect([driverOf(k, GPU), driverOf(k, AUDIO)]).toEqual(["vfio-pci", "vfio-pci"]);
        expect(overrideOf(k, GPU)).toBe("vfio-pci");
    });

    test("--dry-run prints the sysfs writes in order and changes nothing", async () => {
        const k = fakeLabKernel();
        await bindGroup7(new FakeHost(k), true);
        const writes = JSON.stringify(k.state.files);
        const { io, seen } = cli(new FakeHost(k));
        expect(await main(["release", GPU, "--group", "--dry-run"], io)).toBe(0);
        expect(seen.stdout).toBe(
            [
                "would run, under the host lock:",
                `  echo ${GPU} > /sys/bus/pci/drivers/vfio-pci/unbind`,
                `  echo > /sys/bus/pci/devices/${GPU}/driver_override`,
                `  echo ${GPU} > /sys/bus/pci/drivers_probe`,
                `  rm -f /etc/driverctl.d/pci-${GPU}`,
                `  echo ${AUDIO} > /sys/bus/pci/drivers/vfio-pci/unbind`,
                `  echo > /sys/bus/pci/devices/${AUDIO}/driver_override`,
                `  echo ${AUDIO} > /sys/bus/pci/drivers_probe`,
                `  rm -f /etc/driverctl.d/pci-${AUDIO}`,
                "",
            ].join("\n"),
        );
        expect([driverOf(k, GPU), driverOf(k, AUDIO)]).toEqual(["vfio-pci", "vfio-pci"]);
        expect(JSON.stringify(k.state.files)).toBe(writes);
    });

    test("a device on its host driver with no override is left as is", async () => {
        const k = fakeLabKernel();
        const { io, seen } = cli(new FakeHost(k));
        expect(await main(["release", GPU, "--group"], io)).toBe(0);
        expect(seen.stdout).toBe(`${GPU} (VGA controller [1234:1111]): bochs-drm, no override: left as is\n${AUDIO} (Audio device [8086:2668]): snd_hda_intel, no override: left as is\n`);
        expect(driverOf(k, GPU)).toBe("bochs-drm");
    });

    test("a device vfio-pci takes back by id (new_id) is reported still held, with the fix: exit 1", async () => {
        const k = fakeLabKernel();
        expect(k.exec(["modprobe", "vfio-pci"]).code).toBe(0);
        k.write("/sys/bus/pci/drivers/vfio-pci/new_id", "1234 11e8");
        expect(driverOf(k, EDU)).toBe("vfio-pci");
        const { io, seen } = cli(new FakeHost(k));
        expect(await main(["release", EDU], io)).toBe(1);
        expect(seen.stdout).toBe(`${EDU} (Unclassified device [1234:11e8]): vfio-pci → vfio-pci\n`);
        expect(seen.stderr).toMatch(/^pulumi-vfio release: error: 0000:02:00.0 is still on vfio-pci: its ids may be in vfio-pci's new_id list .*remove_id/);
    });

    test("a device no host driver claims ends on no driver, with a warning on stderr", async () => {
        const k = fakeLabKernel();
        expect(k.exec(["modprobe", "vfio-pci"]).code).toBe(0);
        k.write(`/sys/bus/pci/devices/${EDU}/driver_override`, "vfio-pci");
        k.write("/sys/bus/pci/drivers_probe", EDU);
        expect(driverOf(k, EDU)).toBe("vfio-pci");
        const { io, seen } = cli(new FakeHost(k));
        expect(await main(["release", EDU], io)).toBe(0);
        expect(seen.stdout).toBe(`${EDU} (Unclassified device [1234:11e8]): vfio-pci (override vfio-pci) → no driver\n`);
        expect(seen.stderr).toBe("pulumi-vfio release: warning: 0000:02:00.0 has no driver now: no host driver claimed it (load its module with modprobe, or check dmesg)\n");
        expect(driverOf(k, EDU)).toBeNull();
    });

    test("a device the host does not have: exit 1 naming it", async () => {
        const { io, seen } = cli(new FakeHost(fakeLabKernel()));
        expect(await main(["release", "0000:0a:00.0"], io)).toBe(1);
        expect(seen.stderr).toBe("pulumi-vfio release: error: no PCI device 0000:0a:00.0 on this host; `pulumi-vfio inventory` lists the devices\n");
    });
});
