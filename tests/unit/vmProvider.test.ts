/**
 * PassthroughVm's provider functions on the fake machine (its QEMU answers QMP in memory): what a user sees on
 * preview, up, refresh and destroy — preflight refusals, the lifecycle, drift, graceful stop and its fallbacks, and
 * the ordering with IommuBinding.
 */
import { FakeHost } from "../fake/host";
import { FakeKernel } from "../fake/kernel";
import { installKvmfr } from "../fake/kvmfr";
import { fakeLabKernel } from "../fake/lab";
import { crashVm, qemu } from "../fake/qemu";
import * as binding from "../../provider/iommuBinding";
import * as kvmfrDevice from "../../provider/kvmfrDevice";
import * as mdev from "../../provider/mdevInstance";
import { PassthroughVmOutputs, check, create, diff, read, remove, stopQemu, update } from "../../provider/passthroughVm";
import { vmPaths } from "../../provider/qemu/cmdline";

let k: FakeKernel;
let host: FakeHost;
const base = { name: "gpu-vm", accel: "tcg", memoryMb: 256, network: { mode: "none" }, shutdownTimeoutSeconds: 0 };

beforeEach(() => {
    k = fakeLabKernel();
    host = new FakeHost(k);
});

async function bind(device: string) {
    const c = await binding.check({}, { device }, host);
    expect(c.failures).toEqual([]);
    return binding.create(c.inputs, host);
}

async function up(inputs: Record<string, unknown>) {
    const c = await check({}, inputs, host);
    expect(c.failures).toEqual([]);
    return create(c.inputs, host);
}

async function refreshAndDiff(id: string, outs: PassthroughVmOutputs, inputs: Record<string, unknown>) {
    const r = await read(id, outs, host);
    const c = await check(outs, inputs, host);
    return { props: r.props!, inputs: c.inputs, diff: diff(id, r.props!, c.inputs) };
}

const proc = (pid: number) => qemu(k).processes[String(pid)];

test("preview expands a GPU address to its whole IOMMU group and shows the exact command line", async () => {
    const c = await check({}, { ...base, devices: ["01:00.0"] }, host);
    expect(c.failures).toEqual([]);
    expect(c.inputs.hostDevices).toEqual([
        { address: "0000:01:00.0", group: 7 },
        { address: "0000:01:00.1", group: 7 },
    ]);
    expect(c.inputs.commandLine).toEqual(expect.arrayContaining(["vfio-pci,host=0000:01:00.0,multifunction=on,id=hostdev0,bus=rp0,addr=00.0", "vfio-pci,host=0000:01:00.1,id=hostdev1,bus=rp0,addr=00.1"]));
    // Preview changes nothing.
    expect(qemu(k).started).toEqual([]);
});

test("create refuses a group still on host drivers, naming each device and the fix; nothing starts", async () => {
    const err = await create({ ...base, devices: ["0000:01:00.0"] } as any, host).catch((e) => e);
    expect(err.message).toMatch(/VM gpu-vm cannot start: 0000:01:00.0 is bound to bochs-drm, not vfio-pci: bind its group first \(an IommuBinding with wholeGroup: true\)/);
    expect(err.message).toMatch(/0000:01:00.1 is bound to snd_hda_intel, not vfio-pci/);
    expect(err.message).toMatch(/\/dev\/vfio\/7 does not exist/);
    expect(qemu(k).started).toEqual([]);
});

test("passing only the GPU function while the audio function stays on the host is refused as not viable", async () => {
    await bind("01:00.0");
    // The audio function goes back to the host by hand: the group is no longer viable.
    k.write("/sys/bus/pci/drivers/vfio-pci/unbind", "0000:01:00.1");
    k.write("/sys/bus/pci/devices/0000:01:00.1/driver_override", "\n");
    k.write("/sys/bus/pci/drivers/snd_hda_intel/bind", "0000:01:00.1");
    const err = await create({ ...base, devices: [{ address: "0000:01:00.0", functions: ["0000:01:00.0"] }] } as any, host).catch((e) => e);
    expect(err.message).toMatch(/IOMMU group 7 is not viable: 0000:01:00.1 is bound to snd_hda_intel \(QEMU: "group 7 is not viable"\)/);
});

test("full lifecycle: start with the GPU group, a VF and a /dev/shm buffer; QMP shows every device; destroy stops it", async () => {
    await bind("01:00.0");
    k.write("/sys/bus/pci/devices/0000:03:00.0/sriov_drivers_autoprobe", "0");
    k.write("/sys/bus/pci/devices/0000:03:00.0/sriov_numvfs", "1");
    await bind("03:00.1");
    const inputs = { ...base, devices: ["01:00.0", "03:00.1"], sharedMemory: { path: "/dev/shm/looking-glass", sizeMb: 32 } };
    const { id, outs } = await up(inputs);
    expect(id).toBe("gpu-vm");
    expect(outs).toMatchObject({ status: "running", missingDevices: [], qmpSocket: "/run/pulumi-vfio/vm/gpu-vm/qmp.sock", varsFile: null, unit: null });
    expect(outs.vcpuThreads).toHaveLength(2);
    const p = proc(outs.pid!);
    expect(p.argv).toEqual(outs.commandLine);
    // The VM holds the groups and the buffer; the socket is 0600 in a 0700 run dir.
    expect(k.openers("/dev/vfio/7")).toEqual([outs.pid]);
    expect(k.openers("/dev/vfio/10")).toEqual([outs.pid]);
    expect(k.stat("/dev/shm/looking-glass")).toMatch(/^regular file \d+ 0 0 33554432 /);
    expect(k.state.files["/run/pulumi-vfio/vm/gpu-vm/qmp.sock"].mode).toBe(0o600);
    expect(qemu(k).dirModes["/run/pulumi-vfio/vm/gpu-vm"]).toBe(0o700);
    // The argv went to exec as an argv, never through a shell.
    expect(k.state.execLog).toContainEqual(outs.commandLine);

    // A second up with nothing changed is no change.
    const again = await check(outs, inputs, host);
    expect(diff(id, outs, again.inputs).changes).toBe(false);

    await remove(id, outs, host);
    expect(proc(outs.pid!)).toBeUndefined();
    expect(k.openers("/dev/vfio/7")).toEqual([]);
    expect(k.state.files["/run/pulumi-vfio/vm/gpu-vm/qemu.pid"]).toBeUndefined();
    expect(k.state.dirs).not.toContain("/run/pulumi-vfio/vm/gpu-vm");
});

test("an mdev from MdevInstance: passed by sysfsdev, its group held by the VM, so its delete waits for the VM's", async () => {
    const uuid = "3b1f6a7e-8f1c-4d2a-9d3e-2a1b0c9d8e7f";
    const mc = await mdev.check({}, { parent: "mtty", type: "mtty-2", uuid }, host);
    expect(mc.failures).toEqual([]);
    const m = await mdev.create(mc.inputs, host);
    const { id, outs } = await up({ ...base, mdevs: [{ uuid, type: m.outs.typeId }] });
    expect(outs.commandLine).toContain(`vfio-pci,sysfsdev=/sys/bus/mdev/devices/${uuid},id=mdev0,bus=rp-mdev0,addr=00.0`);
    expect(outs.missingDevices).toEqual([]);
    expect(k.openers(`/dev/vfio/${m.outs.iommuGroup}`)).toEqual([outs.pid]);
    await expect(mdev.remove(m.id, m.outs, host)).rejects.toThrow(/held open by PID \d+ \(qemu-system-x86\)\. Stop the VM first/);
    await remove(id, outs, host);
    await mdev.remove(m.id, m.outs, host);
});

test("the VM goes first: IommuBinding's delete is refused while the VM runs, and succeeds after the VM's", async () => {
    const b = await bind("01:00.0");
    const { id, outs } = await up({ ...base, devices: ["01:00.0"] });
    await expect(binding.remove(b.id, b.outs, host)).rejects.toThrow(/held open by PID \d+ \(qemu-system-x86\).*Stop the VM first/);
    await remove(id, outs, host);
    await binding.remove(b.id, b.outs, host);
    expect(k.read("/sys/bus/pci/devices/0000:01:00.0/driver_override")).toBe("(null)\n");
});

test("refresh shows a VM that died as stopped; the next up starts it again", async () => {
    await bind("01:00.0");
    const inputs = { ...base, devices: ["01:00.0"] };
    const { id, outs } = await up(inputs);
    crashVm(k, outs.pid!);
    const d = await refreshAndDiff(id, outs, inputs);
    expect(d.props).toMatchObject({ status: "stopped", pid: null });
    expect(d.diff.changes).toBe(true);
    const u = await update(id, d.props, d.inputs, host);
    expect(u.outs.status).toBe("running");
    expect(u.outs.pid).not.toBe(outs.pid);
    expect(k.openers("/dev/vfio/7")).toEqual([u.outs.pid]);
    await remove(id, u.outs, host);
});

test("a changed command line restarts the VM; running: false stops it; true starts it again", async () => {
    const inputs = { ...base };
    const { id, outs } = await up(inputs);
    const bigger = await check(outs, { ...inputs, memoryMb: 512 }, host);
    expect(diff(id, outs, bigger.inputs).changes).toBe(true);
    const u = await update(id, outs, bigger.inputs, host);
    expect(u.outs.pid).not.toBe(outs.pid);
    expect(proc(u.outs.pid!).argv).toContain("512M");
    expect(proc(outs.pid!)).toBeUndefined();

    const off = await check(u.outs, { ...inputs, memoryMb: 512, running: false }, host);
    const u2 = await update(id, u.outs, off.inputs, host);
    expect(u2.outs).toMatchObject({ status: "stopped", pid: null });
    expect(Object.keys(qemu(k).processes)).toEqual([]);
    expect(diff(id, u2.outs, off.inputs).changes).toBe(false);

    const on = await check(u2.outs, { ...inputs, memoryMb: 512 }, host);
    const u3 = await update(id, u2.outs, on.inputs, host);
    expect(u3.outs.status).toBe("running");
    await remove(id, u3.outs, host);
});

test("a paused VM is continued, not restarted", async () => {
    const { id, outs } = await up(base);
    proc(outs.pid!).status = "paused";
    const d = await refreshAndDiff(id, outs, base);
    expect(d.props.status).toBe("paused");
    expect(d.diff.changes).toBe(true);
    const u = await update(id, d.props, d.inputs, host);
    expect(u.outs).toMatchObject({ status: "running", pid: outs.pid });
    await remove(id, u.outs, host);
});

test("graceful stop: a guest with an OS shuts down on powerdown; without one, quit after the timeout", async () => {
    k.put("/var/lib/disk.img", "", 0o600);
    const withOs = await up({ ...base, name: "with-os", disks: ["/var/lib/disk.img"], shutdownTimeoutSeconds: 5 });
    expect(await stopQemu(host, vmPaths("with-os"), withOs.outs.pid, 5)).toMatchObject({ how: "guest-shutdown" });
    const noOs = await up({ ...base, name: "no-os" });
    expect(await stopQemu(host, vmPaths("no-os"), noOs.outs.pid, 0)).toMatchObject({ how: "quit" });
    expect(k.state.execLog.filter((a) => a[0] === "kill")).toEqual([]);
});

test("a wedged QEMU (QMP never answers) shows as unresponsive; stop falls back to SIGTERM", async () => {
    const { id, outs } = await up(base);
    proc(outs.pid!).hung = true;
    const r = await read(id, outs, host);
    expect(r.props!.status).toBe("unresponsive");
    const how = await stopQemu(host, vmPaths(base.name), outs.pid, 0);
    expect(how.how).toBe("sigterm");
    expect(k.state.execLog).toContainEqual(["kill", "-s", "TERM", String(outs.pid)]);
}, 30_000); // each QMP attempt waits out its own time limit

test("vCPU pinning: threads pinned from query-cpus-fast; moved threads are drift the next up repairs", async () => {
    const inputs = { ...base, cpu: { cores: 2, pinning: [3, 1] } };
    const { id, outs } = await up(inputs);
    const [t0, t1] = outs.vcpuThreads;
    expect(k.read(`/proc/${outs.pid}/task/${t0}/status`)).toMatch(/Cpus_allowed_list:\t3/);
    expect(k.read(`/proc/${outs.pid}/task/${t1}/status`)).toMatch(/Cpus_allowed_list:\t1/);
    k.exec(["taskset", "-p", "-c", "0-3", String(t0)]);
    const d = await refreshAndDiff(id, outs, inputs);
    expect(d.props.pinningOk).toBe(false);
    expect(d.diff.changes).toBe(true);
    const u = await update(id, d.props, d.inputs, host);
    expect(u.outs).toMatchObject({ pid: outs.pid, pinningOk: true });
    expect(k.read(`/proc/${outs.pid}/task/${t0}/status`)).toMatch(/Cpus_allowed_list:\t3/);
    await remove(id, u.outs, host);
});

test("autostart writes and enables a systemd unit; turning it off removes it", async () => {
    const { id, outs } = await up({ ...base, autostart: true });
    const unit = "/etc/systemd/system/pulumi-vfio-vm-gpu-vm.service";
    expect(k.read(unit)).toMatch(/^ExecStart=qemu-system-x86_64 -name gpu-vm /m);
    expect(k.state.files[unit].mode).toBe(0o644);
    expect(qemu(k).units["pulumi-vfio-vm-gpu-vm.service"]).toBe(true);
    expect(outs.unit).toBe("pulumi-vfio-vm-gpu-vm.service");
    const off = await check(outs, base, host);
    const u = await update(id, outs, off.inputs, host);
    expect(u.outs.pid).toBe(outs.pid);
    expect(k.state.files[unit]).toBeUndefined();
    expect(qemu(k).units["pulumi-vfio-vm-gpu-vm.service"]).toBeUndefined();
    await remove(id, u.outs, host);
});

test("OVMF: the VARS template is copied once per VM (0600) and kept across restarts, removed on destroy", async () => {
    k.put("/usr/share/OVMF/OVMF_CODE_4M.fd", "code", 0o644);
    k.put("/usr/share/OVMF/OVMF_VARS_4M.fd", "vars", 0o644);
    const inputs = { ...base, firmware: { code: "/usr/share/OVMF/OVMF_CODE_4M.fd", vars: "/usr/share/OVMF/OVMF_VARS_4M.fd" } };
    const { id, outs } = await up(inputs);
    const vars = "/var/lib/pulumi-vfio/vm/gpu-vm/OVMF_VARS.fd";
    expect(outs.varsFile).toBe(vars);
    expect(k.state.files[vars]).toEqual({ data: "vars", mode: 0o600 });
    expect(outs.commandLine).toContain(`if=pflash,format=raw,file=${vars}`);
    k.state.files[vars].data = "boot entries";
    const u = await update(id, outs, (await check(outs, { ...inputs, memoryMb: 384 }, host)).inputs, host);
    expect(k.state.files[vars].data).toBe("boot entries");
    await remove(id, u.outs, host);
    expect(k.state.files[vars]).toBeUndefined();
});

test("Looking Glass through a KvmfrDevice: the VM holds /dev/kvmfr0, so a kvmfr reload is refused until it stops", async () => {
    installKvmfr(k);
    const kc = await kvmfrDevice.check({}, { index: 0, sizeMb: 32 }, host);
    const lg = await kvmfrDevice.create(kc.inputs, host);
    const { id, outs } = await up({ ...base, sharedMemory: { path: lg.outs.path, sizeMb: lg.outs.sizeMb } });
    expect(outs.commandLine.join(" ")).toContain(lg.outs.qemuArgs.join(" "));
    expect(k.openers("/dev/kvmfr0")).toEqual([outs.pid]);
    const resize = await kvmfrDevice.check(lg.outs, { index: 0, sizeMb: 64 }, host);
    expect(resize.failures[0].reason).toMatch(/\/dev\/kvmfr0 is held open by PID/);
    await remove(id, outs, host);
    expect((await kvmfrDevice.check(lg.outs, { index: 0, sizeMb: 64 }, host)).failures).toEqual([]);
});

test("kvmfr shared memory that is missing, a regular file, or of another size is refused before QEMU runs", async () => {
    const shm = { sharedMemory: { path: "/dev/kvmfr0", sizeMb: 32 } };
    expect((await create({ ...base, ...shm } as any, host).catch((e) => e)).message).toMatch(/\/dev\/kvmfr0 does not exist: the kvmfr module is not loaded.*would create a regular file there/);
    k.put("/dev/kvmfr0", "", 0o644);
    expect((await create({ ...base, ...shm } as any, host).catch((e) => e)).message).toMatch(/\/dev\/kvmfr0 is a regular file, not kvmfr's character device: a QEMU started before the kvmfr module was loaded created it/);
    k.remove("/dev/kvmfr0");
    installKvmfr(k);
    await kvmfrDevice.create({ index: 0, sizeMb: 64 }, host);
    expect((await create({ ...base, ...shm } as any, host).catch((e) => e)).message).toMatch(/\/dev\/kvmfr0 is 64 MiB but sharedMemory.sizeMb is 32/);
    expect(qemu(k).started).toEqual([]);
});

test("QEMU's own refusal is reported with its stderr and nothing is left running", async () => {
    const err = await create({ ...base, extraArgs: ["-bogus"] } as any, host).catch((e) => e);
    expect(err.message).toMatch(/QEMU for VM gpu-vm did not start \(status 1\):\nqemu-system-x86_64: -bogus: invalid option/);
    expect(Object.keys(qemu(k).processes)).toEqual([]);
});

test("a VM of the same name already running outside this stack is not taken over", async () => {
    await up(base);
    await expect(create({ ...base } as any, host)).rejects.toThrow(/a QEMU for VM gpu-vm is already running \(PID \d+.*this stack did not start it/);
});

test("missing mdev, firmware, disk and KVM are all named in one refusal", async () => {
    qemu(k).kvm = false;
    const err = await create(
        {
            ...base,
            accel: "kvm",
            mdevs: ["3b1f6a7e-8f1c-4d2a-9d3e-2a1b0c9d8e7f"],
            firmware: { code: "/usr/share/OVMF/OVMF_CODE_4M.fd", vars: "/usr/share/OVMF/OVMF_VARS_4M.fd" },
            disks: ["/srv/none.qcow2"],
        } as any,
        host,
    ).catch((e) => e);
    expect(err.message).toMatch(/mdev 3b1f6a7e-8f1c-4d2a-9d3e-2a1b0c9d8e7f does not exist/);
    expect(err.message).toMatch(/OVMF code \/usr\/share\/OVMF\/OVMF_CODE_4M.fd does not exist \(Debian\/Ubuntu: apt install ovmf/);
    expect(err.message).toMatch(/disk \/srv\/none.qcow2 does not exist/);
    expect(err.message).toMatch(/\/dev\/kvm does not exist.*accel: "tcg"/);
});

test.each([
    [{ name: "../etc" }, "name", /is not a VM name/],
    [{ cpu: { cores: 2, pinning: [1] } }, "cpu.pinning", /lists 1 host CPU\(s\) for 2 vCPU\(s\)/],
    [{ cpu: { cores: 1, pinning: [7] } }, "cpu.pinning", /host CPU\(s\) 7 are not online/],
    [{ accel: "tcg", cpu: { model: "host" } }, "cpu.model", /needs accel "kvm"/],
    [{ sharedMemory: { path: "/tmp/lg", sizeMb: 32 } }, "sharedMemory.path", /"\/tmp\/lg" is not a valid path\. A kvmfr device .* For example: "\/dev\/kvmfr0"/],
    [{ sharedMemory: { path: "/dev/shm/lg", sizeMb: 48 } }, "sharedMemory.sizeMb", /48 is not a power of two/],
    [{ hideHypervisor: true, hvVendorId: "0123456789abc" }, "hvVendorId", /1 to 12 letters/],
    [{ devices: ["00:10.0"] }, "devices[0]", /is a PCI bridge/],
    [{ devices: ["../x"] }, "devices[0]", /"\.\.\/x" is not a valid devices entry\. A PCI address/],
    [{ network: { mode: "bridge" } }, "network.bridge", /needs network.bridge/],
    [{ extraArgs: "-S" }, "extraArgs", /must be a list, not "-S"/],
])("bad input %j fails at preview on %s", async (over, property, reason) => {
    const c = await check({}, { ...base, ...over }, host);
    const f = c.failures.find((x) => x.property === property);
    expect(f?.reason).toMatch(reason);
});

test("reading a running VM costs at most two round trips", async () => {
    const { id, outs } = await up({ ...base, cpu: { cores: 1, pinning: [2] } });
    const before = host.roundTrips;
    await read(id, outs, host);
    expect(host.roundTrips - before).toBeLessThanOrEqual(2);
});

describe("preview refuses what up would fail on (before any GPU leaves the host)", () => {
    const OVMF = { code: "/usr/share/OVMF/OVMF_CODE_4M.fd", vars: "/usr/share/OVMF/OVMF_VARS_4M.fd" };
    const hugepages = { hugepages: true, memoryMb: 256 };
    const bridge = { network: { mode: "bridge", bridge: "br0" } };
    const makeBridge = () => k.state.dirs.push("/sys/class/net/br0/bridge", "/etc/qemu");

    test.each<[string, () => void, Record<string, unknown>, string, RegExp]>([
        ["accel kvm without /dev/kvm", () => (qemu(k).kvm = false), { accel: "kvm" }, "accel", /^\/dev\/kvm does not exist: enable VT-x\/AMD-V in the firmware and load kvm_intel or kvm_amd .*or use accel: "tcg"/],
        ["no OVMF code", () => k.put(OVMF.vars, "vars", 0o644), { firmware: OVMF }, "firmware.code", /^OVMF code \/usr\/share\/OVMF\/OVMF_CODE_4M\.fd does not exist \(Debian\/Ubuntu: apt install ovmf/],
        ["no OVMF VARS template", () => k.put(OVMF.code, "code", 0o644), { firmware: OVMF }, "firmware.vars", /^OVMF VARS template \/usr\/share\/OVMF\/OVMF_VARS_4M\.fd does not exist/],
        ["a missing disk (string form)", () => undefined, { disks: ["/srv/win.qcow2"] }, "disks[0]", /^disk \/srv\/win\.qcow2 does not exist: .*qemu-img create -f qcow2 \/srv\/win\.qcow2/],
        ["a missing disk (object form)", () => k.put("/var/lib/a.img", "", 0o600), { disks: ["/var/lib/a.img", { path: "/srv/b.img", bus: "nvme" }] }, "disks[1].path", /^disk \/srv\/b\.img does not exist/],
        ["a disk that is a directory", () => undefined, { disks: ["/var/lib"] }, "disks[0]", /^disk \/var\/lib is a directory/],
        ["a missing cdrom", () => undefined, { cdrom: "/srv/win11.iso" }, "cdrom", /^cdrom \/srv\/win11\.iso does not exist/],
        ["a missing ROM file", () => undefined, { devices: [{ address: "01:00.0", romfile: "/srv/gpu.rom" }] }, "devices[0].romfile", /^ROM file \/srv\/gpu\.rom does not exist/],
        ["hugepages with none free", () => (qemu(k).hugepages = { total: 64, free: 0 }), hugepages, "hugepages", /^memoryMb 256 needs 128 free 2 MiB hugepages \(the page size of \/dev\/hugepages\) but 0 are free .*reserve more/],
        [
            "hugepages free, but of another size than /dev/hugepages uses",
            () => Object.assign(qemu(k), { hugepages: { total: 4096, free: 4096 }, hugetlbfsPageKb: 1048576 }),
            { hugepages: true, memoryMb: 2048 },
            "hugepages",
            /^memoryMb 2048 needs 2 free 1 GiB hugepages .* but 0 are free .*hugepagesz=1G hugepages=N on the kernel command line/,
        ],
        ["no hugetlbfs at /dev/hugepages", () => Object.assign(qemu(k), { hugepages: { total: 4096, free: 4096 }, hugetlbfsPageKb: null }), hugepages, "hugepages", /^\/dev\/hugepages is not a hugetlbfs mount/],
        ["no QEMU installed", () => (qemu(k).installed = false), {}, "machine", /^qemu-system-x86_64 is not installed on this host .*apt install qemu-system-x86/],
        ["a bridge that does not exist", () => undefined, bridge, "network.bridge", /^there is no bridge br0 on this host .*ip link add br0 type bridge/],
        ["a bridge qemu-bridge-helper's ACL does not allow", () => (makeBridge(), k.put("/etc/qemu/bridge.conf", "allow virbr0\n", 0o640)), bridge, "network.bridge", /^\/etc\/qemu\/bridge\.conf does not allow br0 .*"allow br0"/],
        ["a bridge with no ACL file", makeBridge, bridge, "network.bridge", /^\/etc\/qemu\/bridge\.conf does not exist, so qemu-bridge-helper denies every bridge/],
    ])("%s: refused on its field, with the fix", async (_what, arrange, over, property, reason) => {
        arrange();
        const c = await check({}, { ...base, ...over }, host);
        expect(c.failures.filter((f) => f.property === property).map((f) => f.reason)).toEqual([expect.stringMatching(reason)]);
        // A preview reads only: nothing started, the GPU still the host's.
        expect(qemu(k).started).toEqual([]);
        expect(k.readlink("/sys/bus/pci/devices/0000:01:00.0/driver")).toMatch(/bochs-drm$/);
    });

    test("all of them at once: one preview lists every problem, in one read round trip", async () => {
        qemu(k).kvm = false;
        qemu(k).installed = false;
        const before = host.roundTrips;
        const c = await check({}, { ...base, accel: "kvm", firmware: OVMF, disks: ["/srv/a.img"], ...hugepages }, host);
        expect(c.failures.map((f) => f.property).sort()).toEqual(["accel", "disks[0]", "firmware.code", "firmware.vars", "hugepages", "machine"]);
        // The environment is read in the batch check sends anyway: with no devices (no group members to read), one.
        expect(host.roundTrips - before).toBe(1);
    });

    test("with everything in place the same inputs pass preview and start: hugepages of the mount's size, bridge allowed, VARS copy kept", async () => {
        Object.assign(qemu(k), { gigantic: { total: 2, free: 2 }, hugetlbfsPageKb: 1048576 });
        k.put(OVMF.code, "code", 0o644);
        k.put(OVMF.vars, "vars", 0o644);
        k.put("/var/lib/a.img", "", 0o600);
        makeBridge();
        k.put("/etc/qemu/bridge.conf", "# ours\nallow br0\n", 0o640);
        const inputs = { ...base, hugepages: true, memoryMb: 2048, firmware: OVMF, disks: ["/var/lib/a.img"], ...bridge };
        const { id, outs } = await up(inputs);
        expect(outs.status).toBe("running");
        expect(qemu(k).gigantic.free).toBe(0);
        // The template may go once the VM has its own VARS copy.
        k.remove(OVMF.vars);
        expect((await check(outs, inputs, host)).failures).toEqual([]);
        await remove(id, outs, host);
    });

    test("a running hugepage VM's own pages count as free for its update (they are given back before the restart)", async () => {
        qemu(k).hugepages = { total: 128, free: 128 };
        const inputs = { ...base, ...hugepages };
        const { id, outs } = await up(inputs);
        expect(qemu(k).hugepages.free).toBe(0);
        const changed = await check(outs, { ...inputs, cpu: { cores: 1 } }, host);
        expect(changed.failures).toEqual([]);
        const u = await update(id, outs, changed.inputs, host);
        expect(u.outs).toMatchObject({ status: "running" });
        expect(u.outs.pid).not.toBe(outs.pid);
        // Another VM wanting the same pages is refused, named.
        const other = await check({}, { ...inputs, name: "other-vm" }, host);
        expect(other.failures.map((f) => f.property)).toEqual(["hugepages"]);
        await remove(id, u.outs, host);
    });
});

test("the guest addresses of the GPU stay put when a disk and an mdev are added (and QEMU accepts them)", async () => {
    await bind("01:00.0");
    const uuid = "3b1f6a7e-8f1c-4d2a-9d3e-2a1b0c9d8e7f";
    const mc = await mdev.check({}, { parent: "mtty", type: "mtty-2", uuid }, host);
    await mdev.create(mc.inputs, host);
    k.put("/var/lib/a.img", "", 0o600);
    const inputs = { ...base, devices: ["01:00.0"] };
    const { id, outs } = await up(inputs);
    const gpuPort = (argv: string[]) => argv.find((a) => a.startsWith("pcie-root-port,id=rp0,"));
    expect(gpuPort(outs.commandLine)).toBe("pcie-root-port,id=rp0,chassis=128,bus=pcie.0,addr=0x10.0");
    const more = await check(outs, { ...inputs, disks: ["/var/lib/a.img"], mdevs: [uuid], network: { mode: "user" } }, host);
    expect(more.failures).toEqual([]);
    const u = await update(id, outs, more.inputs, host);
    expect(gpuPort(u.outs.commandLine)).toBe(gpuPort(outs.commandLine));
    // The fake QEMU places devices by addr= with QEMU's rules (a taken slot, a function without function 0's
    // multifunction bit are refused), so the VM running is QEMU's acceptance of the layout.
    const p = proc(u.outs.pid!);
    const at = (id: string) => p.pciDevices.filter((d) => d.qdevId === id).map((d) => `${d.bus}:${d.slot.toString(16)}.${d.function}`);
    expect([at("rp0"), at("rp-mdev0"), at("disk0-dev"), at("nic0")]).toEqual([["0:10.0"], ["0:18.0"], ["0:4.0"], ["0:2.0"]]);
    await remove(id, u.outs, host);
});

test("the fake QEMU refuses what QEMU refuses: an address in use, a function beside a single-function device", async () => {
    // extraArgs devices that collide with the fixed layout are QEMU's to refuse; the fake must, or the layout
    // test above proves nothing.
    const clash = await create({ ...base, name: "clash", network: { mode: "user" }, extraArgs: ["-device", "edu,id=x,bus=pcie.0,addr=0x2.0"] } as any, host).catch((e) => e);
    expect(clash.message).toMatch(/PCI: slot 2 function 0 not available for edu, in use by virtio-net-pci,id=nic0/);
    const single = await create({ ...base, name: "single", network: { mode: "user" }, extraArgs: ["-device", "edu,id=y,bus=pcie.0,addr=0x2.1"] } as any, host).catch((e) => e);
    expect(single.message).toMatch(/single function device can't be populated in function 2\.1/);
});
