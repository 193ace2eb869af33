/**
 * host.yaml: every bad input the issue names (typo'd key, wrong type, dangling reference, two VMs claiming one
 * device, two KvmfrDevices with one index) and the others we check, each fed as a file and answered with file, line,
 * column and the offending key; a good file; the plan VfioHost makes from it; and `pulumi-vfio init`, whose output
 * must be valid as written and with every suggestion uncommented.
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { CliIO, main } from "../../provider/cli";
import { Host } from "../../provider/host";
import { FakeHost, fakeKernelWithoutIommu, fakeLabKernel } from "../fake";
import { addNvidiaVgpuGpu } from "../fake/mdev";
import { getHostInventory } from "../../provider/inventory";
import { renderHostYaml } from "../../provider/hostInit";
import { defaultMdevUuid } from "../../provider/sysfs/mdev";
import { HostDefinitionError, checkHostDefinition, formatProblem, loadHostDefinition, parseHostDefinition } from "../../sdk/hostDefinition";
import { planHost, resolveOutputRef } from "../../sdk/hostPlan";

/** The problems of a host file as "line:column: path: message" lines. */
function problems(text: string): string[] {
    try {
        parseHostDefinition(text, { file: "host.yaml" });
    } catch (e) {
        if (!(e instanceof HostDefinitionError)) throw e;
        for (const p of e.problems) expect(p.file).toBe("host.yaml");
        return e.problems.map((p) => `${p.line}:${p.column}: ${p.path}: ${p.message}`);
    }
    return [];
}

const GOOD = `# yaml-language-server: $schema=../schema/host.schema.json
name: lab
bindings:
  gpu:
    device: "01:00.0"
    persistent: true
virtualFunctions:
  nvme:
    physicalFunction: "0000:03:00.0"
    count: 2
mdevs:
  serial:
    parent: mtty
    type: mtty-2
kvmfr:
  lg:
    index: 0
    width: 1920
    height: 1080
  lg1: { index: 1, sizeMb: 32 }
vms:
  desktop:
    accel: tcg
    memoryMb: 512
    devices: [gpu]
    virtualFunctions: [{ from: nvme, index: 1 }]
    mdevs: [serial]
    sharedMemory: lg
  other:
    name: other-vm
    sharedMemory: { path: /dev/shm/other, sizeMb: 32 }
`;

describe("a good host file", () => {
    test("parses as written (no defaults filled in) with no problems", () => {
        const def = parseHostDefinition(GOOD, { file: "host.yaml" });
        expect(def.name).toBe("lab");
        expect(def.bindings).toEqual({ gpu: { device: "01:00.0", persistent: true } });
        expect(def.vms!.desktop.devices).toEqual(["gpu"]);
    });

    test("the name defaults to the file name; an empty section is empty", () => {
        expect(parseHostDefinition("bindings:\nvms:\n", { file: "/etc/hosts.d/gpu-box.yaml" })).toEqual({ name: "gpu-box" });
        expect(parseHostDefinition("vms: {}\n").name).toBe("host");
    });

    test("privateKeyFile is resolved next to the host file; ~ is the home directory", () => {
        const def = parseHostDefinition("connection: { host: h, privateKeyFile: keys/id }\nvms: {}\n", { file: "/srv/fleet/hosts/a.yaml" });
        expect(def.connection).toEqual({ host: "h", privateKeyFile: "/srv/fleet/hosts/keys/id" });
        const home = parseHostDefinition("connection: { host: h, privateKeyFile: ~/.ssh/id }\nvms: {}\n", { file: "a.yaml" });
        expect(home.connection!.privateKeyFile).toBe(path.join(os.homedir(), ".ssh/id"));
    });

    test("loadHostDefinition reads the file and names it in messages; a missing file says how to make one", () => {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), "pv-hostdef-"));
        const f = path.join(dir, "box.yaml");
        fs.writeFileSync(f, "vms:\n  a: { memoryMb: lots }\n");
        expect(() => loadHostDefinition(f)).toThrow(`${f}:2:18: vms.a.memoryMb: must be an integer, not "lots"`);
        expect(() => loadHostDefinition(path.join(dir, "nope.yaml"))).toThrow(/does not exist \(write one with `pulumi-vfio init -o .*nope\.yaml`\)/);
        fs.rmSync(dir, { recursive: true });
    });

    test("a file below the working directory (a Pulumi project's) is named relative to it", () => {
        const dir = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), "pv-hostdef-")));
        fs.mkdirSync(path.join(dir, "hosts"));
        fs.writeFileSync(path.join(dir, "hosts", "box.yaml"), "vms:\n  a: { memoryMb: lots }\n");
        const cwd = process.cwd();
        try {
            process.chdir(dir);
            expect(() => loadHostDefinition(path.join(dir, "hosts", "box.yaml"))).toThrow("\n  hosts/box.yaml:2:18: vms.a.memoryMb: must be an integer");
        } finally {
            process.chdir(cwd);
            fs.rmSync(dir, { recursive: true });
        }
    });
});

describe("bad input: errors with line, column and the offending key", () => {
    test.each([
        [
            "a typo'd key, with the key it meant",
            "bindings:\n  gpu:\n    device: \"01:00.0\"\n    persistant: true\n",
            ['4:5: bindings.gpu.persistant: unknown key "persistant"; did you mean "persistent"? (allowed here: device, driver, wholeGroup, allowBootVga, allowHostCritical, persistent, resetMethod, resetOnRelease, consoleHandover, displayManager, deadManSeconds)'],
        ],
        ["a typo'd section", "vm:\n  a: {}\n", ['1:1: vm: unknown key "vm"; did you mean "vms"? (allowed here: name, connection, bootConfig, bindings, virtualFunctions, mdevs, kvmfr, vms)']],
        ["a typo'd key deep in a VM", "vms:\n  a:\n    cpu: { cores: 2, thread: 2 }\n", ['3:22: vms.a.cpu.thread: unknown key "thread"; did you mean "threads"? (allowed here: model, sockets, cores, threads, pinning)']],
        ["a wrong type", "vms:\n  a:\n    memoryMb: 8 GiB\n", ['3:15: vms.a.memoryMb: must be an integer, not "8 GiB". Guest memory in MiB.']],
        ["a wrong type in a list", "vms:\n  a:\n    devices: [gpu, 7]\n", ["3:20: vms.a.devices[1]: must be a string or a map, not 7. The name of an entry under `bindings`. For example: \"gpu\" or \"win11\"."]],
        ["an unquoted octal mode", "kvmfr:\n  lg: { index: 0, sizeMb: 32, mode: 0660 }\n", ['2:37: kvmfr.lg.mode: must be a string, not 660 (YAML read 0660 as a number: quote it, "0660"). Octal mode of /dev/kvmfrN, quoted in YAML. No permission for others: other-readable would let every local user read the guest\'s framebuffer, other-writable write into it; give the Looking Glass client\'s user access with owner or group. For example: "0660" or "0600".']],
        ["a value out of range", "virtualFunctions:\n  v: { physicalFunction: \"03:00.0\", count: -1 }\n", ["2:44: virtualFunctions.v.count: must be >= 0, not -1"]],
        // Pattern errors say what the field is and show an example (the schema's description and examples), no regex.
        [
            "a PCI address that is not one",
            "bindings:\n  gpu: { device: \"1:00.0\" }\n",
            ['2:18: bindings.gpu.device: "1:00.0" is not a valid device. The device: a PCI address (quoted in YAML), or a selector by vendor/device id that must match exactly one device. A PCI address DDDD:BB:DD.F: domain, bus, device (00-1f) and function (0-7) in hex, as `lspci -D` and `pulumi-vfio inventory` print it; BB:DD.F (plain `lspci`) means domain 0000. Quote it in YAML. For example: "0000:01:00.0" or {"vendor":"10de","device":"2204"} or "01:00.0".'],
        ],
        [
            "a driver name with a space",
            "bindings:\n  gpu: { device: \"01:00.0\", driver: vfio pci }\n",
            ["2:37: bindings.gpu.driver: \"vfio pci\" is not a valid driver. The driver the group's members are bound to: `vfio-pci`, `pci-stub`, or a vfio-pci variant driver; loaded with modprobe if not registered. A kernel PCI driver name, as a directory under /sys/bus/pci/drivers: letters, digits, '_', '.' and '-', no spaces or slashes. For example: \"vfio-pci\" or \"pci-stub\"."],
        ],
        ["a reference that cannot be a name", "vms:\n  a: { devices: [gpu.0] }\n", ["2:18: vms.a.devices[0]: \"gpu.0\" is not a valid devices entry. The name of an entry under `bindings`. A name: letters, digits, '_' and '-', starting with a letter or digit, at most 63 characters (no '.' or spaces). For example: \"gpu\" or \"win11\"."]],
        ["an enum value", "vms:\n  a: { accel: hvf }\n", ['2:15: vms.a.accel: must be one of "kvm", "tcg", not "hvf"']],
        ["a missing required key", "bindings:\n  gpu: { driver: vfio-pci }\n", ['2:3: bindings.gpu: "device" is required in bindings.gpu. The device: a PCI address (quoted in YAML), or a selector by vendor/device id that must match exactly one device. For example: "0000:01:00.0" or {"vendor":"10de","device":"2204"} or "01:00.0".']],
        ["a bad entry name", "mdevs:\n  \"my vgpu\": { parent: mtty, type: mtty-1 }\n", ['2:3: mdevs.my vgpu: "my vgpu" is not a valid name: use letters, digits, \'_\' and \'-\', starting with a letter or digit (at most 63 characters)']],
        [
            "a connection on one resource",
            "bindings:\n  gpu: { device: \"01:00.0\", connection: { host: h } }\n",
            ["2:29: bindings.gpu.connection: not allowed here: the top-level `connection` applies to every resource of the host"],
        ],
        [
            "a secret in the file",
            "connection:\n  host: h\n  password: hunter2\n",
            ["3:3: connection.password: no secrets in a host file (it is meant for git): use `privateKeyFile`, an ssh-agent (SSH_AUTH_SOCK), or pass the secret to VfioHost's `connection` option from Pulumi config (`pulumi config set --secret`)"],
        ],
        ["a dangling binding reference", "bindings:\n  gpu: { device: \"01:00.0\" }\nvms:\n  a: { devices: [gpu0] }\n", ['4:18: vms.a.devices[0]: no binding named "gpu0" under `bindings`; did you mean "gpu"?']],
        ["a dangling mdev reference", "vms:\n  a:\n    mdevs: [{ mdev: vgpu }]\n", ['3:21: vms.a.mdevs[0].mdev: no mdev named "vgpu" under `mdevs` (`mdevs` is empty)']],
        ["a dangling kvmfr reference", "kvmfr:\n  lg: { index: 0, sizeMb: 32 }\n  lg2: { index: 1, sizeMb: 32 }\nvms:\n  a: { sharedMemory: looking-glass }\n", ['5:22: vms.a.sharedMemory: no kvmfr device named "looking-glass" under `kvmfr` (there: lg, lg2)']],
        [
            "a VF index past the count",
            "virtualFunctions:\n  nic: { physicalFunction: \"03:00.0\", count: 2 }\nvms:\n  a: { virtualFunctions: [{ from: nic, index: 2 }] }\n",
            ["4:47: vms.a.virtualFunctions[0].index: virtualFunctions.nic makes 2 VFs: index 2 does not exist (0–1)"],
        ],
        [
            "two VMs claiming one device",
            "bindings:\n  gpu: { device: \"01:00.0\" }\nvms:\n  a: { devices: [gpu] }\n  b:\n    devices: [gpu]\n",
            ['6:15: vms.b.devices[0]: binding "gpu" is already claimed by VM "a" at vms.a.devices[0] (line 4); a device can be passed to one VM only'],
        ],
        [
            "two VMs claiming one mdev",
            "mdevs:\n  m: { parent: mtty, type: mtty-1 }\nvms:\n  a: { mdevs: [m] }\n  b: { mdevs: [{ mdev: m, display: false }] }\n",
            ['5:24: vms.b.mdevs[0].mdev: mdev "m" is already claimed by VM "a" at vms.a.mdevs[0] (line 4); a device can be passed to one VM only'],
        ],
        [
            "two VMs claiming one VF",
            "virtualFunctions:\n  nic: { physicalFunction: \"03:00.0\", count: 2 }\nvms:\n  a: { virtualFunctions: [{ from: nic, index: 0 }] }\n  b: { virtualFunctions: [{ from: nic, index: 0 }] }\n",
            ['5:27: vms.b.virtualFunctions[0]: VF 0 of "nic" is already claimed by VM "a" at vms.a.virtualFunctions[0] (line 4); a device can be passed to one VM only'],
        ],
        [
            "two VMs sharing one Looking Glass buffer",
            "vms:\n  a: { sharedMemory: { path: /dev/shm/lg, sizeMb: 32 } }\n  b: { sharedMemory: { path: /dev/shm/lg, sizeMb: 32 } }\n",
            ["3:30: vms.b.sharedMemory.path: /dev/shm/lg is already claimed by VM \"a\" at vms.a.sharedMemory.path (line 2); a device can be passed to one VM only"],
        ],
        ["one VM listing a device twice", "bindings:\n  gpu: { device: \"01:00.0\" }\nvms:\n  a: { devices: [gpu, gpu] }\n", ['4:23: vms.a.devices[1]: binding "gpu" is listed twice in this VM']],
        [
            "two KvmfrDevices with one index",
            "kvmfr:\n  lg: { index: 0, sizeMb: 32 }\n  lg-hdr:\n    index: 0\n    sizeMb: 128\n",
            ["4:12: kvmfr.lg-hdr.index: /dev/kvmfr0 is already kvmfr.lg (line 2); each kvmfr device needs its own index"],
        ],
        [
            "one name in two sections",
            "bindings:\n  gpu: { device: \"01:00.0\" }\nmdevs:\n  gpu: { parent: mtty, type: mtty-1 }\n",
            ['4:3: mdevs.gpu: the name "gpu" is already used by bindings.gpu (line 2); give every entry its own name'],
        ],
        ["one name twice in a section", "bindings:\n  gpu: { device: \"01:00.0\" }\n  gpu: { device: \"02:00.0\" }\n", ["3:3: bindings.gpu: this key is already used above in the same map: every name must be unique"]],
        [
            "two VMs with one QEMU name",
            "vms:\n  a: { name: win }\n  win: { memoryMb: 1024 }\n",
            ['3:3: vms.win: VM name "win" is also the name of vms.a.name (line 2): QEMU\'s -name and /run/pulumi-vfio/vm/<name> must be unique'],
        ],
        [
            "one device bound twice",
            "bindings:\n  gpu: { device: \"01:00.0\" }\n  gpu-again: { device: \"0000:01:00.0\", driver: pci-stub }\n",
            ["3:24: bindings.gpu-again.device: 0000:01:00.0 is already bound by bindings.gpu (line 2); one binding per device"],
        ],
        [
            "a PF bound to vfio-pci while its VFs are wanted",
            "bindings:\n  nvme: { device: \"03:00.0\" }\nvirtualFunctions:\n  vfs: { physicalFunction: \"0000:03:00.0\", count: 2 }\n",
            ["2:19: bindings.nvme.device: 0000:03:00.0 is the physical function of virtualFunctions.vfs: bound to vfio-pci it can no longer create VFs (sriov_numvfs fails with ENOENT); pass its VFs instead"],
        ],
        [
            "one PF in two virtualFunctions entries",
            "virtualFunctions:\n  a: { physicalFunction: \"03:00.0\", count: 1 }\n  b: { physicalFunction: \"0000:03:00.0\", count: 2 }\n",
            ["3:26: virtualFunctions.b.physicalFunction: 0000:03:00.0 already has its VFs in virtualFunctions.a (line 2): sriov_numvfs is one number per physical function"],
        ],
        [
            "one mdev UUID twice",
            "mdevs:\n  a: { parent: mtty, type: mtty-1, uuid: 6c1f3e0a-4b9d-4c6e-9a51-0d2f7b8e1a35 }\n  b: { parent: mtty, type: mtty-1, uuid: 6C1F3E0A-4B9D-4C6E-9A51-0D2F7B8E1A35 }\n",
            ["3:42: mdevs.b.uuid: UUID 6c1f3e0a-4b9d-4c6e-9a51-0d2f7b8e1a35 is already the UUID of mdevs.a (line 2); mdev UUIDs are unique on a host (the kernel answers EEXIST)"],
        ],
        ["broken YAML", "vms:\n  a: { memoryMb: 1024\n", ["3:1: : YAML syntax: Flow map in block collection must be sufficiently indented and end with a }"]],
        ["not a map", "- a\n- b\n", ["1:1: : a host definition is a map with the keys name, connection, bootConfig, bindings, virtualFunctions, mdevs, kvmfr, vms"]],
    ])("%s", (_what, text, expected) => {
        expect(problems(text)).toEqual(expected);
    });

    test("every problem of a file is reported at once, in file order", () => {
        const text = "bindings:\n  gpu: { device: \"01:00.0\", drivr: vfio-pci }\nvms:\n  a: { memoryMb: lots }\n  b: { accel: hvf }\n";
        expect(problems(text).map((p) => p.split(":").slice(0, 2).join(":"))).toEqual(["2:29", "4:18", "5:15"]);
    });

    test("the error message lists every problem with file:line:column", () => {
        expect(() => parseHostDefinition("vms:\n  a: { devices: [gpu] }\n", { file: "hosts/a.yaml" })).toThrow(
            '1 problem in the host definition:\n  hosts/a.yaml:2:18: vms.a.devices[0]: no binding named "gpu" under `bindings` (`bindings` is empty)',
        );
    });

    test("a definition written in TypeScript gets the same checks, without positions", () => {
        const ps = checkHostDefinition({ vms: { a: { devices: ["gpu"] } }, kvmfr: { x: { index: 0, sizeMb: 32 }, y: { index: 0, sizeMb: 32 } } });
        expect(ps).toEqual([
            { path: "kvmfr.y.index", message: "/dev/kvmfr0 is already kvmfr.x; each kvmfr device needs its own index" },
            { path: "vms.a.devices[0]", message: 'no binding named "gpu" under `bindings` (`bindings` is empty)' },
        ]);
    });
});

describe("a file with nothing in it is refused, not read as a host with nothing on it", () => {
    // Loaded as an empty host, a truncated file would make `pulumi up` delete every binding and VM.
    const EXPLICIT = "a host meant to have nothing says so with its sections written empty, e.g. `name: <host>` then `bindings: {}` and `vms: {}` (what `pulumi-vfio init` writes does this)";
    test.each([
        ["an empty file", "", `1:1: : the host file is empty: expected a map with the sections bindings, virtualFunctions, mdevs, kvmfr, vms (and name, connection); ${EXPLICIT}`],
        ["a file of whitespace", "\n\n  \n", `1:1: : the host file is empty: expected a map with the sections bindings, virtualFunctions, mdevs, kvmfr, vms (and name, connection); ${EXPLICIT}`],
        ["a comment-only file", "# yaml-language-server: $schema=./schema.json\n# bindings:\n#   gpu: { device: \"01:00.0\" }\n", `1:1: : the host file has only comments: expected a map with the sections bindings, virtualFunctions, mdevs, kvmfr, vms (and name, connection); ${EXPLICIT}`],
        ["null", "null\n", `1:1: : the host file is null: expected a map with the sections bindings, virtualFunctions, mdevs, kvmfr, vms (and name, connection); ${EXPLICIT}`],
        ["~", "--- ~\n", `1:1: : the host file is null: expected a map with the sections bindings, virtualFunctions, mdevs, kvmfr, vms (and name, connection); ${EXPLICIT}`],
        ["a file cut after its name", "name: gpu-box\n", `1:1: : none of the sections bootConfig, bindings, virtualFunctions, mdevs, kvmfr, vms is in the host file, as in a truncated one; ${EXPLICIT}`],
        ["an empty map", "{}\n", `1:1: : none of the sections bootConfig, bindings, virtualFunctions, mdevs, kvmfr, vms is in the host file, as in a truncated one; ${EXPLICIT}`],
    ])("%s", (_what, text, expected) => {
        expect(problems(text)).toEqual([expected]);
    });

    test("an intentionally empty host: its sections written empty", () => {
        expect(parseHostDefinition("name: spare\nbindings: {}\nvms: {}\n")).toEqual({ name: "spare", bindings: {}, vms: {} });
        expect(parseHostDefinition("name: spare\nbindings:\nvms:\n")).toEqual({ name: "spare" });
    });
});

describe("what each resource checks without a host is checked at load time, at its position", () => {
    test.each([
        ["kvmfr: a mode other users can read", "kvmfr:\n  lg: { index: 0, sizeMb: 32, mode: \"0664\" }\n", ['2:37: kvmfr.lg.mode: mode 0664 lets every local user read the guest\'s framebuffer (other-readable); use "0660" (or "0600") and give the Looking Glass client\'s user access with owner or group (e.g. group: kvm)']],
        ["kvmfr: a mode other users can write", "kvmfr:\n  lg:\n    index: 0\n    sizeMb: 32\n    mode: \"0606\"\n", ['5:11: kvmfr.lg.mode: mode 0606 lets every local user read the guest\'s framebuffer (other-readable) and write into it (other-writable); use "0660" (or "0600") and give the Looking Glass client\'s user access with owner or group (e.g. group: kvm)']],
        ["kvmfr: a size that is not a power of two", "kvmfr:\n  lg: { index: 0, sizeMb: 48 }\n", ["2:27: kvmfr.lg.sizeMb: sizeMb 48 is not a power of two (kvmfr and Looking Glass expect 32, 64, 128, ...)"]],
        ["kvmfr: neither size nor resolution", "kvmfr:\n  lg: { index: 0 }\n", ["2:7: kvmfr.lg.sizeMb: sizeMb is required, or width and height to compute it (Looking Glass's formula: 1920×1080 → 32 MiB)"]],
        ["mdev: vram.min above vram.max", "mdevs:\n  v:\n    parent: mbochs\n    vram: { min: 64, max: 4 }\n", ["4:11: mdevs.v.vram: vram.min (64) is above vram.max (4)"]],
        ["mdev: both type and vram", "mdevs:\n  v: { parent: mtty, type: mtty-1, vram: { min: 1 } }\n", ["2:42: mdevs.v.vram: give either type (an exact type id) or vram (bounds in MiB), not both"]],
        ["mdev: neither type nor vram", "mdevs:\n  v: { parent: mtty }\n", ["2:6: mdevs.v.type: give type (an exact type id) or vram (bounds in MiB); `pulumi-vfio inventory` lists each parent's types"]],
        ["mdev: an attribute path out of the device", "mdevs:\n  v: { parent: mtty, type: mtty-1, attrs: [{ name: ../../x, value: \"1\" }] }\n", [expect.stringMatching(/^2:52: mdevs\.v\.attrs\[0\]\.name: "\.\.\/\.\.\/x" is not an mdev attribute name/)]],
        ["vm: pinning that does not match the vCPUs", "vms:\n  a:\n    cpu: { cores: 2, pinning: [3] }\n", ["3:31: vms.a.cpu.pinning: cpu.pinning lists 1 host CPU(s) for 2 vCPU(s) (sockets × cores × threads): give one host CPU per vCPU"]],
        ["vm: a bridge network without a bridge", "vms:\n  a:\n    network: { mode: bridge }\n", ['3:14: vms.a.network.bridge: network.mode "bridge" needs network.bridge (e.g. "br0", allowed in /etc/qemu/bridge.conf)']],
        ["vm: cpu model host under tcg", "vms:\n  a: { accel: tcg, cpu: { model: host } }\n", ['2:34: vms.a.cpu.model: cpu.model "host" needs accel "kvm"; with tcg use "max" or a named model']],
    ])("%s", (_what, text, expected) => {
        expect(problems(text)).toEqual(expected);
    });
});

describe("a YAML syntax error is reported where the yaml library puts it, with no key that is not at fault", () => {
    test.each([
        ["a key indented less than its siblings", "bindings:\n  gpu:\n    device: \"01:00.0\"\n   driver: vfio-pci\nvms:\n  a: {}\n", ["4:1: : YAML syntax: All mapping items must start at the same column"]],
        ["an unclosed quote", "name: x\nbindings:\n  gpu:\n    device: \"01:00.0\n    driver: vfio-pci\nvms:\n  a: {}\n", ['8:1: : YAML syntax: Missing closing "quote']],
        ["a tab as indentation", "name: x\nbindings:\n  gpu:\n\tdevice: \"01:00.0\"\n", ["4:1: : YAML syntax: Tabs are not allowed as indentation"]],
        ["a value that is a map in a compact map", "name: x\nbindings:\n  gpu:\n    device: a: b\n", ["4:13: : YAML syntax: Nested mappings are not allowed in compact mappings"]],
        ["a list item indented less than the list", "vms:\n  a:\n    devices:\n    - gpu\n   - x\n", ["5:1: : YAML syntax: A block sequence may not be used as an implicit map key", "5:4: : YAML syntax: Implicit keys need to be on a single line"]],
    ])("%s", (_what, text, expected) => {
        expect(problems(text)).toEqual(expected);
    });
});

describe("the errors the READMEs quote are what the loader prints", () => {
    const root = path.join(__dirname, "../..");
    /**
     * A README says "misspell `persistent` on line N, or make line M `<text>`" and then quotes what preview says:
     * each mistake made alone in the file, loaded, gives the quoted line, exactly.
     */
    function check(readme: string, yamlText: string, quoted: string[]) {
        const m = /[Mm]isspell\s+`persistent`\s+on\s+line\s+(\d+)[\s\S]*?make\s+line\s+(\d+)\s+`([^`]+)`/.exec(readme);
        expect(m).not.toBeNull();
        const lines = yamlText.split("\n");
        const typo = [...lines];
        expect(typo[Number(m![1]) - 1]).toContain("persistent");
        typo[Number(m![1]) - 1] = typo[Number(m![1]) - 1].replace("persistent", "persistant");
        const ref = [...lines];
        const [indent, key] = /^(\s*)([A-Za-z]+):/.exec(ref[Number(m![2]) - 1])!.slice(1);
        expect(m![3].startsWith(`${key}:`)).toBe(true);
        ref[Number(m![2]) - 1] = indent + m![3];
        const printed = [typo, ref].map((l) => {
            try {
                parseHostDefinition(l.join("\n"), { file: "host.yaml" });
            } catch (e) {
                if (e instanceof HostDefinitionError) return e.problems.map(formatProblem).join("\n");
                throw e;
            }
            return "(no problem)";
        });
        expect(printed).toEqual(quoted);
    }

    test("README.md, \"Your host in a file: host.yaml\"", () => {
        const readme = fs.readFileSync(path.join(root, "README.md"), "utf8");
        const section = readme.slice(readme.indexOf("## Your host in a file: host.yaml"), readme.indexOf("### The root program"));
        const example = /```yaml\n([\s\S]*?)```/.exec(section)![1];
        const quoted = section.split("\n").filter((l) => l.startsWith("    host.yaml:")).map((l) => l.slice(4));
        expect(quoted).toHaveLength(2);
        check(section, example, quoted);
    });

    test("examples/yaml-host/README.md, on the example's host.yaml", () => {
        const readme = fs.readFileSync(path.join(root, "examples/yaml-host/README.md"), "utf8");
        const quoted = readme.split("\n").filter((l) => l.startsWith("host.yaml:"));
        expect(quoted).toHaveLength(2);
        check(readme, fs.readFileSync(path.join(root, "examples/yaml-host/host.yaml"), "utf8"), quoted);
    });
});

describe("planHost", () => {
    const def = parseHostDefinition(GOOD, { file: "host.yaml" });
    const plan = planHost("lab", def, { project: "proj", stack: "dev" });
    const byName = new Map(plan.resources.map((r) => [r.name, r]));

    test("resources in dependency order, named <host>-<entry>", () => {
        expect(plan.resources.map((r) => `${r.type} ${r.name}`)).toEqual([
            "IommuBinding lab-gpu",
            "VirtualFunctions lab-nvme",
            "IommuBinding lab-nvme.vf1",
            "MdevInstance lab-serial",
            "KvmfrDevice lab-lg",
            "KvmfrDevice lab-lg1",
            "PassthroughVm lab-desktop",
            "PassthroughVm lab-other",
        ]);
    });

    test("a VM depends on and is replaced with everything it holds; kvmfr N after N-1; a VF's binding after the VFs", () => {
        expect(byName.get("lab-desktop")).toMatchObject({ dependsOn: ["lab-gpu", "lab-nvme.vf1", "lab-serial", "lab-lg"], replaceWith: ["lab-gpu", "lab-nvme.vf1", "lab-serial", "lab-lg"] });
        expect(byName.get("lab-other")).toMatchObject({ dependsOn: [], replaceWith: [] });
        expect(byName.get("lab-lg1")!.dependsOn).toEqual(["lab-lg"]);
        expect(byName.get("lab-nvme.vf1")).toMatchObject({ dependsOn: ["lab-nvme"], inputs: { device: { $ref: "lab-nvme", as: "value", path: ["addresses", 1] }, driver: "vfio-pci" } });
    });

    test("an mdev gets the UUID the MdevInstance class would derive, so a replay makes the same device", () => {
        expect(byName.get("lab-serial")!.inputs.uuid).toBe(defaultMdevUuid("proj", "dev", "lab-serial"));
    });

    test("a VM's inputs: its QEMU name, and references resolving to what PassthroughVm takes", () => {
        const vm = byName.get("lab-desktop")!.inputs as Record<string, any>;
        expect(vm).toMatchObject({ name: "desktop", accel: "tcg", memoryMb: 512 });
        expect(byName.get("lab-other")!.inputs).toMatchObject({ name: "other-vm", sharedMemory: { path: "/dev/shm/other", sizeMb: 32 } });
        const binding = { address: "0000:01:00.0", members: [{ address: "0000:01:00.0", managed: true }, { address: "0000:01:00.1", managed: true }, { address: "0000:00:10.0", managed: false }] };
        expect(resolveOutputRef(vm.devices[0], binding)).toEqual({ address: "0000:01:00.0", functions: ["0000:01:00.0", "0000:01:00.1"] });
        expect(resolveOutputRef(vm.mdevs[0], { uuid: "u", typeId: "mtty-2", backend: "mdev", address: null })).toEqual({ uuid: "u", type: "mtty-2" });
        expect(resolveOutputRef(vm.mdevs[0], { uuid: "u", typeId: "1157", backend: "nvidia-vgpu", address: "0000:41:00.5" })).toEqual({ uuid: "u", type: "1157", address: "0000:41:00.5" });
        expect(resolveOutputRef(vm.sharedMemory, { path: "/dev/kvmfr0", sizeMb: 32 })).toEqual({ path: "/dev/kvmfr0", sizeMb: 32 });
    });

    test("xVga, romfile and display travel with the reference", () => {
        const d = parseHostDefinition("bindings:\n  gpu: { device: \"01:00.0\" }\nmdevs:\n  m: { parent: mtty, type: mtty-1 }\nvms:\n  a:\n    devices: [{ binding: gpu, xVga: true, romfile: /fw/gpu.rom }]\n    mdevs: [{ mdev: m, display: false }]\n");
        const vm = planHost("h", d, { project: "p", stack: "s" }).resources.find((r) => r.type === "PassthroughVm")!.inputs as Record<string, any>;
        expect(resolveOutputRef(vm.devices[0], { address: "0000:01:00.0", members: [{ address: "0000:01:00.0", managed: true }] })).toEqual({ address: "0000:01:00.0", functions: ["0000:01:00.0"], xVga: true, romfile: "/fw/gpu.rom" });
        expect(resolveOutputRef(vm.mdevs[0], { uuid: "u", typeId: "mtty-1", backend: "mdev" })).toEqual({ uuid: "u", type: "mtty-1", display: false });
    });

    test("an mdev on a PF with VFs (NVIDIA vGPU 17+) waits for the VFs", () => {
        const d = parseHostDefinition("virtualFunctions:\n  l40s: { physicalFunction: \"41:00.0\", count: 4 }\nmdevs:\n  v: { parent: \"0000:41:00.0\", vram: { min: 4096 } }\n");
        expect(planHost("h", d, { project: "p", stack: "s" }).resources.find((r) => r.name === "h-v")!.dependsOn).toEqual(["h-l40s"]);
    });
});

// ------------------------------------------------------------------------------------------------ init

function cli(host: Host, env: NodeJS.ProcessEnv = {}) {
    const seen = { stdout: "", stderr: "", files: {} as Record<string, string> };
    const io: CliIO = {
        stdout: (t) => (seen.stdout += t),
        stderr: (t) => (seen.stderr += t),
        host: () => host,
        readFile: (p) => {
            throw Object.assign(new Error(`ENOENT ${p}`), { code: "ENOENT" });
        },
        writeFile: (p, text, overwrite) => {
            if (p in seen.files && !overwrite) throw Object.assign(new Error("EEXIST"), { code: "EEXIST" });
            seen.files[p] = text;
        },
        env,
    };
    return { io, seen };
}

describe("pulumi-vfio init", () => {
    test("on the lab machine: the GPUs with their groups, the SR-IOV device, the mdev types — all commented, all valid", async () => {
        const { io, seen } = cli(new FakeHost(fakeLabKernel()));
        expect(await main(["init"], io)).toBe(0);
        const text = seen.stdout;
        expect(text.split("\n")[0]).toBe("# yaml-language-server: $schema=./node_modules/pulumi-vfio/schema/host.schema.json");
        expect(text).toContain("  # 0000:01:00.0 VGA controller [1234:1111], bochs-drm\n  #   IOMMU group 7 with 0000:01:00.1 Audio device [8086:2668], snd_hda_intel");
        expect(text).toMatch(/0000:00:01\.0 .*\n.*\n.*boot_vga=1: the host's console/);
        expect(text).toContain('  # gpu:\n  #   device: "0000:01:00.0"');
        expect(text).toContain("# 0000:03:00.0 NVMe controller [1b36:0010], nvme: 0 of 4 VFs enabled");
        expect(text).toContain('# parent mtty: mtty-1 "Single port serial" (24 left), mtty-2 "Dual port serial" (12 left)');
        // Nothing active: a `pulumi up` right after init changes nothing.
        expect(parseHostDefinition(text, { file: "host.yaml" })).toEqual({ name: "host" });
    });

    test("every suggestion, uncommented, is a valid definition whose VM uses one of everything", async () => {
        const k = fakeLabKernel();
        const inv = await getHostInventory(new FakeHost(k));
        const def = parseHostDefinition(renderHostYaml(inv, { uncommented: true }), { file: "host.yaml" });
        expect(Object.keys(def.bindings!)).toEqual(["gpu"]);
        expect(def.virtualFunctions).toEqual({ "vfs-03-00-0": { physicalFunction: "0000:03:00.0", count: 2 } });
        expect(Object.keys(def.mdevs!)).toEqual(["vgpu-mbochs", "vgpu-mtty"]);
        expect(def.vms!.vm1).toMatchObject({ devices: ["gpu"], virtualFunctions: [{ from: "vfs-03-00-0", index: 0 }], mdevs: ["vgpu-mbochs"], sharedMemory: "looking-glass" });
    });

    test("an SR-IOV GPU (NVIDIA vGPU 17+) is offered through its VFs, never bound whole; still valid uncommented", async () => {
        const k = fakeLabKernel();
        addNvidiaVgpuGpu(k);
        const inv = await getHostInventory(new FakeHost(k));
        const text = renderHostYaml(inv, { uncommented: true });
        expect(text).toContain("SR-IOV GPU: share it through its VFs (virtualFunctions) or vGPUs (mdevs), not by binding the PF");
        const def = parseHostDefinition(text);
        expect(Object.values(def.bindings!).map((b) => b.device)).toEqual(["0000:01:00.0"]);
        expect(Object.values(def.virtualFunctions!).map((v) => v.physicalFunction)).toEqual(["0000:03:00.0", "0000:41:00.0"]);
    });

    test("without an IOMMU the file starts with the fix, and is still valid", async () => {
        const { io, seen } = cli(new FakeHost(fakeKernelWithoutIommu()));
        expect(await main(["init"], io)).toBe(0);
        expect(seen.stdout).toMatch(/# WARNING: .*intel_iommu=on.*\n/);
        expect(() => parseHostDefinition(seen.stdout)).not.toThrow();
    });

    test("without an IOMMU it proposes the BootConfig that turns it on and claims the second GPU's functions at boot", async () => {
        const inv = await getHostInventory(new FakeHost(fakeKernelWithoutIommu()));
        const text = renderHostYaml(inv, { uncommented: true });
        expect(parseHostDefinition(text).bootConfig).toEqual({ kernelParameters: ["intel_iommu=on", "iommu=pt"], earlyBinding: ["0000:01:00.0", "0000:01:00.1"] });
        // As written, everything is a comment: nothing happens until the user uncomments it.
        expect(renderHostYaml(inv)).toContain("# bootConfig:\n#   kernelParameters: [intel_iommu=on, iommu=pt]\n");
        const on = renderHostYaml(await getHostInventory(new FakeHost(fakeLabKernel())), { uncommented: true });
        expect(parseHostDefinition(on).bootConfig).toBeUndefined();
    });

    test("--ssh writes the connection (the key file's path, never the key) and -o writes the file once", async () => {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), "pv-init-"));
        const key = path.join(dir, "id_ed25519");
        const { utils } = await import("ssh2");
        const pair = utils.generateKeyPairSync("ed25519");
        fs.writeFileSync(key, pair.private);
        const { io, seen } = cli(new FakeHost(fakeLabKernel()));
        io.readFile = (p) => fs.readFileSync(p, "utf8");
        expect(await main(["init", "--ssh", "admin@gpu-box.lan:2222", "-i", key, "-o", "hosts/gpu-box.yaml"], io)).toBe(0);
        const text = seen.files["hosts/gpu-box.yaml"];
        expect(text).toContain(`connection:\n  host: "gpu-box.lan"\n  user: "admin"\n  port: 2222\n`);
        expect(text).toContain(`  privateKeyFile: ${JSON.stringify(key)}\n`);
        expect(text).not.toContain(pair.private.split("\n")[1]);
        expect(parseHostDefinition(text, { file: "hosts/gpu-box.yaml" })).toMatchObject({ name: "gpu-box", connection: { host: "gpu-box.lan", user: "admin", port: 2222, privateKeyFile: key } });
        expect(seen.stderr).toContain("wrote hosts/gpu-box.yaml");

        expect(await main(["init", "--ssh", "admin@gpu-box.lan:2222", "-i", key, "-o", "hosts/gpu-box.yaml"], io)).toBe(1);
        expect(seen.stderr).toContain("pulumi-vfio init: error: hosts/gpu-box.yaml exists: pass --force to overwrite it");
        expect(await main(["init", "--ssh", "admin@gpu-box.lan:2222", "-i", key, "-o", "hosts/gpu-box.yaml", "--force"], io)).toBe(0);
        fs.rmSync(dir, { recursive: true });
    });

    test("--force without -o is a usage error", async () => {
        const { io, seen } = cli(new FakeHost(fakeLabKernel()));
        expect(await main(["init", "--force"], io)).toBe(2);
        expect(seen.stderr).toContain("--force needs -o FILE");
    });
});

describe("bootConfig: the boot half of a host file", () => {
    const BOOT = `name: rig
bootConfig:
  kernelParameters: [intel_iommu=on, iommu=pt]
  earlyBinding: ["0000:01:00.0", "0000:01:00.1"]
  reboot: ifNeeded
bindings:
  gpu: { device: "01:00.0" }
`;

    test("becomes <name>-boot, planned first, with every other resource after it", () => {
        const plan = planHost("rig", parseHostDefinition(BOOT, { file: "host.yaml" }), { project: "p", stack: "dev" });
        expect(plan.resources.map((r) => `${r.type} ${r.name}`)).toEqual(["BootConfig rig-boot", "IommuBinding rig-gpu"]);
        expect(plan.resources[0].inputs).toEqual({ kernelParameters: ["intel_iommu=on", "iommu=pt"], earlyBinding: ["0000:01:00.0", "0000:01:00.1"], reboot: "ifNeeded" });
        expect(plan.resources[1].dependsOn).toEqual(["rig-boot"]);
    });

    test("a file with only the boot half is a host, not an empty file", () => {
        expect(problems("bootConfig:\n  kernelParameters: [intel_iommu=on]\n")).toEqual([]);
    });

    test("bad boot input is reported with its position; an entry named boot would share its resource", () => {
        expect(problems("bootConfig:\n  kernelParameters: [\"intel_iommu=on iommu=pt\"]\n  reboot: sometimes\n")).toEqual([
            expect.stringMatching(/^2:22: bootConfig\.kernelParameters\[0\]: /),
            expect.stringMatching(/^3:11: bootConfig\.reboot: must be one of "never", "ifNeeded"/),
        ]);
        expect(problems("bootConfig: { kernelParameters: [iommu=pt] }\nbindings:\n  boot: { device: \"01:00.0\" }\n")).toEqual([
            '3:3: bindings.boot: the name "boot" is already used by bootConfig (line 1); give every entry its own name',
        ]);
    });
});
