/**
 * The host inventory (`pulumi-vfio inventory`, `getHost()`): what a user sees about their IOMMU groups, devices and
 * drivers, against the fake lab kernel; the CLI through its exported `main`.
 */
import { execFileSync } from "child_process";
import { addMdevParent, mdev } from "../fake/mdev";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import * as pulumi from "@pulumi/pulumi";
import { utils as sshUtils } from "ssh2";
import { FakeHost, FakeKernel, fakeKernelWithoutIommu, fakeLabKernel } from "../fake";
import { useFakeMachine } from "../fake/register";
import { Connection } from "../../provider/host/ssh";
import { Host } from "../../provider/host/types";
import { IOMMU_OFF_FIX } from "../../provider/sysfs/iommu";
import { HostInventory, formatInventory, getHostInventory, parsePciIds, pciIdWants, pciIdsAwkArgv } from "../../provider/inventory";
import { CliIO, main } from "../../provider/cli";
import { getHost, getHostOutput } from "../../sdk/getHost";

/** Real pci.ids lines for the lab's ids, plus a decoy vendor that also has a device 0010 (must not be picked). */
const PCI_IDS = [
    "# excerpt of pci.ids for the tests",
    "1000  Broadcom / LSI",
    "\t0010  53C1510",
    "1b36  Red Hat, Inc.",
    "\t000c  QEMU PCIe Root port",
    "\t0010  QEMU NVM Express Controller",
    "\t0100  QXL paravirtual graphic card",
    "\t\t1af4 1100  QEMU Virtual Machine",
    "1af4  Red Hat, Inc.",
    "\t1000  Virtio network device",
    "8086  Intel Corporation",
    "\t2668  82801FB/FBM/FR/FW/FRW (ICH6 Family) High Definition Audio Controller",
    "\t\t1043 814d  P5GD1-VW Mainboard",
    "\t\t1af4 1100  QEMU Virtual Machine",
    "\t29c0  82G33/G31/P35/P31 Express DRAM Controller",
    "C 03  Display controller",
    "\t00  VGA compatible controller",
    "\t\t00  VGA controller",
    "\t02  3D controller",
    "C 04  Multimedia controller",
    "\t03  Audio device",
    "",
].join("\n");

function withPciIds(k: FakeKernel): FakeKernel {
    k.mkdir("/usr/share/misc");
    k.put("/usr/share/misc/pci.ids", PCI_IDS, 0o644);
    return k;
}

/** mdev parents as sysfs shows them: the sample `mtty` driver and a PCI parent (the edu device at 02:00.0). */
function withMdev(k: FakeKernel): FakeKernel {
    // The fake lab machine has the lab's mdev parents (provider/host/fake/mdev.ts); shape them as this test wants:
    // mtty only (with a description, which the real mtty lacks), plus a PCI parent.
    const s = mdev(k);
    delete s.parents.mbochs;
    s.parents.mtty.types[0].description = "This is a single port serial";
    addMdevParent(k, { name: "0000:02:00.0", driver: "edu-mdev", capacity: 4, types: [{ id: "edu-4", name: "quarter", deviceApi: "vfio-pci", cost: 1 }] });
    return k;
}

/** Bind both functions of the secondary GPU to vfio-pci the way driverctl does, straight on the fake kernel. */
function bindGroup7ToVfio(k: FakeKernel): void {
    expect(k.exec(["modprobe", "vfio-pci"]).code).toBe(0);
    for (const [addr, drv] of [["0000:01:00.0", "bochs-drm"], ["0000:01:00.1", "snd_hda_intel"]]) {
        k.write(`/sys/bus/pci/drivers/${drv}/unbind`, addr);
        k.write(`/sys/bus/pci/devices/${addr}/driver_override`, "vfio-pci");
        k.write("/sys/bus/pci/drivers_probe", addr);
    }
}

const dev = (inv: HostInventory, a: string) => inv.devices.find((d) => d.address === a)!;
/** The table row of a device in the text report. */
const row = (text: string, a: string) => text.split("\n").find((l) => l.startsWith(`  ${a}  `)) ?? "";
const group = (inv: HostInventory, n: number) => inv.groups.find((g) => g.number === n)!;

describe("getHostInventory on the lab host", () => {
    test("lists every IOMMU group with its members, and the GPU's group is not viable while its audio is on snd_hda_intel", async () => {
        const host = new FakeHost(fakeLabKernel());
        const inv = await getHostInventory(host);
        expect(inv.iommu).toEqual({ enabled: true, fix: null });
        expect(inv.kernelRelease).toBe("6.1.0-fake-amd64");
        expect(inv.groups.map((g) => g.number)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        expect(group(inv, 7).members).toEqual(["0000:01:00.0", "0000:01:00.1"]);
        expect(group(inv, 6).members).toEqual(["0000:00:1f.0", "0000:00:1f.2", "0000:00:1f.3"]);
        expect(group(inv, 7).viable).toBe(false);
        expect(group(inv, 7).problems).toEqual(["0000:01:00.0 is bound to bochs-drm", "0000:01:00.1 is bound to snd_hda_intel"]);
        expect(group(inv, 7).vfioDevice).toBeNull();
        // The edu device has no driver and bridges are on pcieport: both usable as they are.
        expect(group(inv, 8)).toMatchObject({ viable: true, problems: [] });
        expect(group(inv, 3)).toMatchObject({ viable: true, members: ["0000:00:10.0"] });
        expect(dev(inv, "0000:01:00.1")).toMatchObject({ group: 7, driver: "snd_hda_intel", class: "040300", className: "Audio device", vendor: "8086", device: "2668" });
        expect(inv.devices).toHaveLength(13);
        expect(host.roundTrips).toBeLessThanOrEqual(3);
    });

    test("marks the console GPU boot-vga, and shows reset methods and SR-IOV capacity", async () => {
        const inv = await getHostInventory(new FakeHost(fakeLabKernel()));
        expect(dev(inv, "0000:00:01.0").bootVga).toBe(true);
        expect(dev(inv, "0000:01:00.0").bootVga).toBe(false);
        expect(dev(inv, "0000:03:00.0")).toMatchObject({ driver: "nvme", resetMethods: ["flr", "bus"], sriov: { totalVfs: 4, numVfs: 0, vfs: [] }, physfn: null });
        const text = formatInventory(inv);
        const line = (a: string) => row(text, a);
        expect(line("0000:00:01.0")).toContain("boot-vga");
        expect(line("0000:01:00.0")).not.toContain("boot-vga");
        expect(line("0000:03:00.0")).toContain("reset:flr,bus");
        expect(line("0000:03:00.0")).toContain("sriov 0/4");
        expect(text).toMatch(/IOMMU group 7: not viable: 0000:01:00.0 is bound to bochs-drm; 0000:01:00.1 is bound to snd_hda_intel/);
        expect(text).toMatch(/IOMMU group 8: viable\n/);
        // Members are listed under their group header, in order.
        const lines = text.split("\n");
        const g7 = lines.findIndex((l) => l.startsWith("IOMMU group 7:"));
        expect(lines[g7 + 1]).toContain("0000:01:00.0");
        expect(lines[g7 + 2]).toContain("0000:01:00.1");
        expect(text).not.toContain("WARNING");
    });

    test("after binding the whole group to vfio-pci, the group is viable and /dev/vfio/7 is shown", async () => {
        const k = fakeLabKernel();
        bindGroup7ToVfio(k);
        const inv = await getHostInventory(new FakeHost(k));
        expect(group(inv, 7)).toMatchObject({ viable: true, problems: [], vfioDevice: "/dev/vfio/7" });
        expect(dev(inv, "0000:01:00.1")).toMatchObject({ driver: "vfio-pci", driverOverride: "vfio-pci" });
        expect(inv.modules).toEqual(expect.arrayContaining(["vfio", "vfio_pci", "vfio_iommu_type1"]));
        const text = formatInventory(inv);
        expect(text).toContain("IOMMU group 7: viable, /dev/vfio/7");
        expect(text).toContain("override:vfio-pci");
        expect(text).toMatch(/^modules: .*vfio_pci/m);
    });

    test("enabled VFs appear with their PF, and the PF shows how many are on", async () => {
        const k = fakeLabKernel();
        k.write("/sys/bus/pci/devices/0000:03:00.0/sriov_numvfs", "2");
        const inv = await getHostInventory(new FakeHost(k));
        const pf = dev(inv, "0000:03:00.0");
        expect(pf.sriov).toEqual({ totalVfs: 4, numVfs: 2, vfs: ["0000:03:00.1", "0000:03:00.2"] });
        expect(dev(inv, "0000:03:00.1").physfn).toBe("0000:03:00.0");
        const text = formatInventory(inv);
        expect(text).toContain("sriov 2/4");
        expect(row(text, "0000:03:00.2")).toContain("vf of 0000:03:00.0");
    });

    test("names devices from the host's pci.ids, scoped by vendor, in at most 3 round trips", async () => {
        const host = new FakeHost(withPciIds(fakeLabKernel()));
        const inv = await getHostInventory(host);
        expect(host.roundTrips).toBeLessThanOrEqual(3);
        expect(inv.pciIds).toBe("/usr/share/misc/pci.ids");
        expect(dev(inv, "0000:01:00.1")).toMatchObject({
            vendorName: "Intel Corporation",
            deviceName: "82801FB/FBM/FR/FW/FRW (ICH6 Family) High Definition Audio Controller",
            subsystemName: "QEMU Virtual Machine",
            className: "Audio device",
        });
        // 1b36:0010, not the decoy 1000:0010 that comes first in the file.
        expect(dev(inv, "0000:03:00.0")).toMatchObject({ vendorName: "Red Hat, Inc.", deviceName: "QEMU NVM Express Controller" });
        // Ids pci.ids does not know stay unnamed rather than guessed.
        expect(dev(inv, "0000:01:00.0")).toMatchObject({ vendorName: null, deviceName: null, className: "VGA compatible controller" });
        const text = formatInventory(inv);
        expect(row(text, "0000:01:00.1")).toMatch(/8086:2668 .*Intel Corporation 82801FB\/FBM\/FR\/FW\/FRW \(ICH6 Family\) High Definition Audio Controller \(QEMU Virtual Machine\)$/);
        expect(text).not.toContain("no readable pci.ids");
    });

    test("without pci.ids the report says where names would come from", async () => {
        const inv = await getHostInventory(new FakeHost(fakeLabKernel()));
        expect(inv.pciIds).toBeNull();
        expect(dev(inv, "0000:01:00.1").deviceName).toBeNull();
        expect(formatInventory(inv)).toContain("names: none (no readable pci.ids on the host");
    });

    test("lists mdev types of PCI and non-PCI parents with their free instances, still in 3 round trips", async () => {
        const host = new FakeHost(withMdev(withPciIds(fakeLabKernel())));
        const inv = await getHostInventory(host);
        expect(host.roundTrips).toBe(3);
        expect(inv.mdev.map((p) => [p.parent, p.pci])).toEqual([
            ["0000:02:00.0", true],
            ["mtty", false],
        ]);
        expect(inv.mdev[1].types[0]).toEqual({ id: "mtty-1", name: "Single port serial", description: "This is a single port serial", availableInstances: 24, deviceApi: "vfio-pci" });
        expect(inv.mdev[1].types[1]).toMatchObject({ id: "mtty-2", availableInstances: 12, description: null });
        expect(dev(inv, "0000:02:00.0").mdevTypes.map((t) => t.id)).toEqual(["edu-4"]);
        const text = formatInventory(inv);
        expect(text).toContain("mtty  mdev: mtty-1(24) mtty-2(12)");
        expect(row(text, "0000:02:00.0")).toContain("mdev: edu-4(4)");
    });
});

describe("getHostInventory with the IOMMU off", () => {
    test("says so first, with the kernel command line and firmware fix, and still lists the devices", async () => {
        const host = new FakeHost(fakeKernelWithoutIommu());
        const inv = await getHostInventory(host);
        expect(inv.iommu).toEqual({ enabled: false, fix: IOMMU_OFF_FIX });
        expect(inv.groups).toEqual([]);
        expect(inv.devices).toHaveLength(13);
        expect(inv.devices.every((d) => d.group === null)).toBe(true);
        const text = formatInventory(inv);
        const first = text.split("\n")[0];
        expect(first).toMatch(/^WARNING: The IOMMU is off/);
        expect(first).toContain("intel_iommu=on");
        expect(first).toContain("amd_iommu=on");
        expect(first).toContain("VT-d");
        expect(first).toContain("AMD-Vi");
        expect(text).toContain("no IOMMU groups (IOMMU off)");
        expect(text).toContain("0000:01:00.1");
        expect(host.roundTrips).toBeLessThanOrEqual(3);
    });
});

describe("pci.ids lookup on the host with awk", () => {
    const hasAwk = (() => {
        try {
            execFileSync("awk", ["BEGIN { exit 0 }"]);
            return true;
        } catch {
            return false;
        }
    })();
    (hasAwk ? test : test.skip)("the awk program prints exactly the lines that give the same names as the whole file", () => {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), "pci-ids-"));
        const file = path.join(dir, "pci.ids");
        fs.writeFileSync(file, PCI_IDS);
        const wants = pciIdWants([
            { vendor: "8086", device: "2668", subsystemVendor: "1af4", subsystemDevice: "1100" },
            { vendor: "1b36", device: "0010", subsystemVendor: "1af4", subsystemDevice: "1100" },
        ]);
        const [cmd, ...args] = pciIdsAwkArgv(file, wants);
        const excerpt = execFileSync(cmd, args, { encoding: "utf8" });
        expect(excerpt).not.toContain("53C1510");
        expect(excerpt).not.toContain("P5GD1-VW");
        const flat = (n: ReturnType<typeof parsePciIds>) => Object.fromEntries(Object.entries(n).map(([k, m]) => [k, [...(m as Map<string, string>)]]));
        expect(flat(parsePciIds(excerpt, wants))).toEqual(flat(parsePciIds(PCI_IDS, wants)));
        expect(parsePciIds(excerpt, wants).devices.get("1b36:0010")).toBe("QEMU NVM Express Controller");
        fs.rmSync(dir, { recursive: true });
    });
});

// ------------------------------------------------------------------------------------------------ CLI

function cli(host: Host, files: Record<string, string> = {}, env: NodeJS.ProcessEnv = {}) {
    const seen = { stdout: "", stderr: "", connections: [] as (Connection | undefined)[] };
    const io: CliIO = {
        stdout: (t) => (seen.stdout += t),
        stderr: (t) => (seen.stderr += t),
        host: (c) => {
            seen.connections.push(c);
            return host;
        },
        readFile: (p) => {
            if (!(p in files)) throw Object.assign(new Error(`ENOENT: no such file or directory, open '${p}'`), { code: "ENOENT" });
            return files[p];
        },
        env,
    };
    return { io, seen };
}

describe("pulumi-vfio inventory", () => {
    test("prints the table and exits 0", async () => {
        const { io, seen } = cli(new FakeHost(fakeLabKernel()));
        expect(await main(["inventory"], io)).toBe(0);
        expect(seen.stdout).toContain("IOMMU group 7: not viable");
        expect(seen.stderr).toBe("");
        expect(seen.connections).toEqual([undefined]);
    });

    test("--json prints the inventory as parseable JSON", async () => {
        const { io, seen } = cli(new FakeHost(fakeLabKernel()));
        expect(await main(["inventory", "--json"], io)).toBe(0);
        const inv = JSON.parse(seen.stdout) as HostInventory;
        expect(inv.groups.find((g) => g.number === 7)).toMatchObject({ members: ["0000:01:00.0", "0000:01:00.1"], viable: false });
        expect(inv.devices.find((d) => d.address === "0000:00:01.0")?.bootVga).toBe(true);
    });

    test("on a host without IOMMU the first line is the fix, and the exit status is still 0", async () => {
        const { io, seen } = cli(new FakeHost(fakeKernelWithoutIommu()));
        expect(await main(["inventory"], io)).toBe(0);
        expect(seen.stdout.split("\n")[0]).toMatch(/^WARNING: The IOMMU is off.*intel_iommu=on.*amd_iommu=on/);
    });

    test.each([
        [[], /usage: pulumi-vfio <command>/],
        [["invent"], /unknown command "invent"/],
        [["inventory", "--bogus"], /Unknown option '--bogus'/],
        [["inventory", "extra"], /Unexpected argument 'extra'/],
        [["inventory", "--ssh"], /--ssh/],
        [["inventory", "-i", "/root/.ssh/id_ed25519"], /-i needs --ssh/],
        [["inventory", "--ssh", "a@b@c"], /expected \[USER@\]HOST\[:PORT\]/],
        [["inventory", "--ssh", "root@h:70000"], /port 70000 is out of range/],
    ])("usage error %j exits 2 and explains", async (argv, message) => {
        const { io, seen } = cli(new FakeHost(fakeLabKernel()));
        expect(await main(argv as string[], io)).toBe(2);
        expect(seen.stderr).toMatch(message);
        expect(seen.stderr).toMatch(/usage: pulumi-vfio/);
        expect(seen.stdout).toBe("");
    });

    test("--help prints the options and exits 0", async () => {
        const { io, seen } = cli(new FakeHost(fakeLabKernel()));
        expect(await main(["inventory", "--help"], io)).toBe(0);
        expect(seen.stdout).toContain("--ssh [USER@]HOST[:PORT]");
        expect(seen.stdout).toContain("--json");
    });

    test("a host that fails gives exit 1 and one line on stderr", async () => {
        const broken = new FakeHost(fakeLabKernel());
        broken.run = async () => {
            throw new Error("cannot connect to root@10.9.9.9:22 over SSH: connect ECONNREFUSED\n10.9.9.9:22");
        };
        const { io, seen } = cli(broken);
        expect(await main(["inventory"], io)).toBe(1);
        expect(seen.stderr).toBe("pulumi-vfio inventory: error: cannot connect to root@10.9.9.9:22 over SSH: connect ECONNREFUSED 10.9.9.9:22\n");
        expect(seen.stdout).toBe("");
    });

    test("--ssh with -i builds the connection from the key file and never prints the key", async () => {
        const key = sshUtils.generateKeyPairSync("ed25519").private;
        const { io, seen } = cli(new FakeHost(fakeLabKernel()), { "/home/me/.ssh/lab": key });
        expect(await main(["inventory", "--ssh", "admin@10.0.0.5:2222", "-i", "/home/me/.ssh/lab", "--json"], io)).toBe(0);
        expect(seen.connections[0]).toMatchObject({ host: "10.0.0.5", user: "admin", port: 2222, privateKey: key });
        expect(seen.stdout + seen.stderr).not.toContain(key.split("\n")[1]);
    });

    test("--ssh without -i uses the agent, or leaves the SSH host to try ssh's default identities", async () => {
        const ok = cli(new FakeHost(fakeLabKernel()), {}, { SSH_AUTH_SOCK: "/run/user/1000/ssh-agent.sock" });
        expect(await main(["inventory", "--ssh", "[fd00::5]:22"], ok.io)).toBe(0);
        expect(ok.seen.connections[0]).toMatchObject({ host: "fd00::5", port: 22, agentSocketPath: "/run/user/1000/ssh-agent.sock" });
        expect(ok.seen.connections[0]?.privateKey).toBeUndefined();

        const none = cli(new FakeHost(fakeLabKernel()));
        expect(await main(["inventory", "--ssh", "lab"], none.io)).toBe(0);
        expect(none.seen.connections[0]).toEqual({ host: "lab", dialErrorLimit: 2, perDialTimeout: 15 });
    });

    test("a bad or missing key file is an error that names the file, not its contents", async () => {
        const secret = "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END OPENSSH PRIVATE KEY-----\n";
        const bad = cli(new FakeHost(fakeLabKernel()), { "/k": secret });
        expect(await main(["inventory", "--ssh", "lab", "-i", "/k"], bad.io)).toBe(1);
        expect(bad.seen.stderr).toMatch(/^pulumi-vfio inventory: error: cannot use the key file \/k: .*\n$/);
        expect(bad.seen.stderr).not.toContain("c2VjcmV0");

        const missing = cli(new FakeHost(fakeLabKernel()));
        expect(await main(["inventory", "--ssh", "lab", "-i", "/nope"], missing.io)).toBe(1);
        expect(missing.seen.stderr).toBe("pulumi-vfio inventory: error: cannot read the key file /nope (ENOENT)\n");
    });
});

// ------------------------------------------------------------------------------------------------ SDK

describe("getHost / getHostOutput", () => {
    let dir: string;
    beforeEach(() => {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), "gethost-"));
        useFakeMachine(path.join(dir, "machine.json"));
    });
    afterEach(() => {
        useFakeMachine(undefined);
        fs.rmSync(dir, { recursive: true, force: true });
    });

    test("getHost() reads the host a program runs against", async () => {
        const inv = await getHost();
        expect(inv.groups.find((g) => g.number === 7)?.viable).toBe(false);
        expect(inv.devices.find((d) => d.address === "0000:00:01.0")?.bootVga).toBe(true);
    });

    test("getHost refuses Outputs in the connection and points to getHostOutput", async () => {
        await expect(getHost({ connection: { host: pulumi.output("10.0.0.5") } })).rejects.toThrow(/getHostOutput/);
    });

    test("getHostOutput resolves to the same inventory", async () => {
        const out = getHostOutput({});
        const inv = await new Promise<HostInventory>((resolve) => out.apply((v) => resolve(v)));
        expect(inv.groups.find((g) => g.number === 7)?.members).toEqual(["0000:01:00.0", "0000:01:00.1"]);
    });
});
