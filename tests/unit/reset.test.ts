/**
 * IommuBinding and resets (provider/reset/plan.ts, binding/plan.ts, binding/apply.ts) on the fake kernel: what the
 * preview says per function, the reset destroy runs between vfio-pci and the host driver, a reset that fails (the
 * function stays on vfio-pci, the errno in the error), and `resetMethod` with its udev rule. Kernel facts:
 * drivers/pci/pci.c (pci_reset_function, bus reset refused with other functions on the bus), pci-sysfs.c
 * (reset_method_store: EINVAL for a method the device does not support), gnif/vendor-reset (its device table,
 * device_specific since 5.15).
 */
import { FakeHost } from "../fake/host";
import { fakeLabKernel } from "../fake/lab";
import { FakePciDevice, pci } from "../fake/pci";
import { FakeKernel } from "../fake/kernel";
import { IommuBindingOutputs, check, create, remove, update } from "../../provider/iommuBinding";
import { planRelease } from "../../provider/binding/plan";
import { resetRuleFile } from "../../provider/reset/plan";

const NVME = "0000:03:00.0";
const GPU = "0000:01:00.0";
const NAVI = "0000:05:00.0";
let k: FakeKernel;
let host: FakeHost;
const dev = (a: string) => pci(k).devices[a];

/** An AMD Navi 10 (RX 5700 XT, 1002:731f) with its HDMI audio, on amdgpu, behind their own root port: the reset-bug GPU. */
function addNavi(k: FakeKernel, methods: string[] = ["flr", "bus"]): void {
    const s = pci(k);
    const base = { subsystemVendor: "0x1002", subsystemDevice: "0x0b36", override: null, group: 30, numaNode: -1, parent: "0000:00:10.3" };
    s.devices[NAVI] = { ...base, address: NAVI, vendor: "0x1002", device: "0x731f", class: "0x030000", driver: "amdgpu", resetMethods: methods } as FakePciDevice;
    s.devices["0000:05:00.1"] = { ...base, address: "0000:05:00.1", vendor: "0x1002", device: "0xab38", class: "0x040300", driver: "snd_hda_intel", resetMethods: [] } as FakePciDevice;
    s.drivers.amdgpu = { name: "amdgpu", module: "amdgpu", ids: ["1002:731f"], dynamicIds: [] };
    s.drivers.snd_hda_intel.ids.push("1002:ab38");
    s.loaded.push("amdgpu");
}

beforeEach(() => {
    k = fakeLabKernel();
    host = new FakeHost(k);
});

async function up(inputs: Record<string, unknown>) {
    const c = await check({}, inputs, host);
    expect(c.failures).toEqual([]);
    return (await create(c.inputs, host)).outs;
}

describe("preview: which reset each function gets", () => {
    test("a Navi 10 without vendor-reset says plainly that a VM restart may need a host reboot", async () => {
        addNavi(k);
        const c = await check({}, { device: NAVI }, host);
        expect(c.failures).toEqual([]);
        expect(c.inputs.plan).toContain(`${NAVI} (AMD Navi 10 1002:731f): no working reset without vendor-reset (not loaded) — a VM restart may need a host reboot`);
    });

    test("with vendor_reset loaded and resetMethod device_specific, the Navi resets by vendor-reset on destroy", async () => {
        addNavi(k, ["flr", "bus", "device_specific"]);
        pci(k).loaded.push("vendor_reset");
        const c = await check({}, { device: NAVI, resetMethod: "device_specific" }, host);
        expect(c.failures).toEqual([]);
        expect(c.inputs.plan).toContain(`${NAVI} (AMD Navi 10 1002:731f): resets with vendor-reset (Navi 10); destroy resets it (device_specific) after unbinding it from vfio-pci, before amdgpu`);
        expect(c.inputs.plan).toContain(`${NAVI} reset_method: flr bus device_specific → device_specific (kept across reboots by ${resetRuleFile(NAVI)})`);
    });

    test("the NVMe (alone behind its root port) resets by flr; resetOnRelease: false says there will be none", async () => {
        const c = await check({}, { device: NVME }, host);
        expect(c.inputs.plan).toContain(`${NVME} (NVMe controller 1b36:0010): resets by flr; destroy resets it (flr) after unbinding it from vfio-pci, before nvme`);
        const off = await check({}, { device: NVME, resetOnRelease: false }, host);
        expect(off.inputs.plan).toContain(`${NVME} (NVMe controller 1b36:0010): resets by flr; no reset on destroy (resetOnRelease: false)`);
    });

    test("resetOnRelease: true on the GPU whose only reset its audio function prevents is refused at preview, naming why", async () => {
        const c = await check({}, { device: GPU, resetOnRelease: true }, host);
        expect(c.failures).toEqual([
            {
                property: "resetOnRelease",
                reason: expect.stringMatching(/^resetOnRelease: true, but 0000:01:00\.0 \(VGA controller 1234:1111\) has no usable reset: no reset of this function alone \(reset_method: bus;.*1 other function shares it\).*Remove resetOnRelease/),
            },
        ]);
    });
});

describe("destroy resets between vfio-pci and the host driver", () => {
    test("the NVMe is reset by flr while on no driver, then nvme takes it back; still one batch", async () => {
        const outs = await up({ device: NVME });
        expect(outs.members[0]).toMatchObject({ address: NVME, driver: "vfio-pci", resetOnRelease: "flr" });
        const before = host.roundTrips;
        await remove(NVME, outs, host);
        expect(host.roundTrips - before).toBe(1);
        expect(dev(NVME).resetLog).toEqual([{ method: "flr", driver: null }]);
        expect(dev(NVME).driver).toBe("nvme");
    });

    test("the GPU pair (no usable reset) is released without a reset, as before", async () => {
        const outs = await up({ device: GPU });
        expect(outs.members.some((m) => "resetOnRelease" in m)).toBe(false);
        await remove(GPU, outs, host);
        expect([dev(GPU).driver, dev(GPU).resetLog]).toEqual(["bochs-drm", undefined]);
    });

    test("resetOnRelease: false releases without a reset", async () => {
        const outs = await up({ device: NVME, resetOnRelease: false });
        await remove(NVME, outs, host);
        expect([dev(NVME).driver, dev(NVME).resetLog]).toEqual(["nvme", undefined]);
    });

    test("a reset that fails leaves the device on vfio-pci (not on no driver), says the errno, and keeps the binding; resetOnRelease: false then releases it", async () => {
        const outs = await up({ device: NVME });
        dev(NVME).failReset = "EIO";
        const err = (await remove(NVME, outs, host).catch((e: Error) => e)) as Error;
        expect(err.message).toMatch(new RegExp(`the reset of ${NVME} failed \\(.*/sys/bus/pci/devices/${NVME}/reset.*EIO.*\\)\\. ${NVME} is back on vfio-pci, not left without a driver`));
        expect(err.message).toMatch(/set resetOnRelease: false to release it without a reset/);
        expect(dev(NVME)).toMatchObject({ driver: "vfio-pci", override: "vfio-pci" });
        // The journal stays (the binding is still there for the next destroy).
        expect(Object.keys(k.state.files).some((f) => f.includes("pulumi-vfio") && f.includes(NVME))).toBe(true);
        const c = await check(outs, { device: NVME, resetOnRelease: false }, host);
        const { outs: off } = await update(NVME, outs, c.inputs, host);
        await remove(NVME, off, host);
        expect(dev(NVME)).toMatchObject({ driver: "nvme", override: null });
    });

    test("reset_method emptied by hand after up: the kernel's ENOTTY is reported and the device stays on vfio-pci", async () => {
        const outs = await up({ device: NVME });
        await host.run([{ op: "write", path: `/sys/bus/pci/devices/${NVME}/reset_method`, data: "\n" }]);
        await expect(remove(NVME, outs, host)).rejects.toThrow(/ENOTTY.*no listed reset method works for this function now/);
        expect(dev(NVME).driver).toBe("vfio-pci");
    });

    test("a member a host driver took back by hand is not reset under it: the release stops before the reset and restores from what it reads", async () => {
        const outs = await up({ device: NVME });
        await host.run([
            { op: "write", path: "/sys/bus/pci/drivers/vfio-pci/unbind", data: NVME },
            { op: "write", path: `/sys/bus/pci/devices/${NVME}/driver_override`, data: "\n" },
            { op: "write", path: "/sys/bus/pci/drivers/nvme/bind", data: NVME },
        ]);
        const ops = planRelease(outs as IommuBindingOutputs).ops;
        expect(ops.map((o) => (o.op === "write" ? `${o.path.split("/").pop()}` : o.op))).toEqual(["unbind", "readlink", "reset", "driver_override", "bind"]);
        await remove(NVME, outs, host);
        expect([dev(NVME).driver, dev(NVME).resetLog]).toEqual(["nvme", undefined]);
    });
});

describe("resetMethod", () => {
    test("written to reset_method before any driver moves, kept by a 0600 udev rule, restored and removed on destroy", async () => {
        const outs = await up({ device: NVME, resetMethod: "flr" });
        expect(dev(NVME).resetMethods).toEqual(["flr"]);
        const rule = k.state.files[resetRuleFile(NVME)];
        expect(rule.mode).toBe(0o600);
        expect(rule.data).toContain(`ACTION=="add", SUBSYSTEM=="pci", KERNEL=="${NVME}", ATTR{reset_method}="flr"`);
        expect(outs.resetMethodBefore).toBe("flr bus");
        await remove(NVME, outs, host);
        expect(dev(NVME).resetMethods).toEqual(["flr", "bus"]);
        expect(k.state.files[resetRuleFile(NVME)]).toBeUndefined();
    });

    test("a method the device does not support: the kernel's EINVAL fails the apply and nothing is left changed", async () => {
        const c = await check({}, { device: "0000:02:00.0", resetMethod: "flr" }, host);
        expect(c.failures).toEqual([]);
        await expect(create(c.inputs, host)).rejects.toThrow(/reset_method.*EINVAL.*does not support that reset method/);
        expect(dev("0000:02:00.0")).toMatchObject({ driver: null, override: null, resetMethods: ["bus"] });
        expect(k.state.files[resetRuleFile("0000:02:00.0")]).toBeUndefined();
    });

    test("an update that drops resetMethod gives the list from before the binding back, and the rule goes", async () => {
        const outs = await up({ device: NVME, resetMethod: "flr" });
        const c = await check(outs, { device: NVME }, host);
        const { outs: after } = await update(NVME, outs, c.inputs, host);
        expect(dev(NVME).resetMethods).toEqual(["flr", "bus"]);
        expect(k.state.files[resetRuleFile(NVME)]).toBeUndefined();
        expect("resetMethodBefore" in after).toBe(false);
    });

    test("a value outside the kernel's method names is refused at preview, naming the field", async () => {
        const c = await check({}, { device: NVME, resetMethod: "reboot" }, host);
        expect(c.failures[0].property).toBe("resetMethod");
    });
});
