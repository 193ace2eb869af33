/**
 * What reset a function gets when a VM lets go of it (provider/reset/capability.ts), and where the user sees it:
 * `pulumi-vfio inventory`. Facts: drivers/pci/pci.c (reset methods, bus reset refused with other functions on the
 * bus), gnif/vendor-reset src/device-db.h (the reset-bug GPUs) and udev/99-vendor-reset.rules (device_specific).
 */
import { FakeHost, fakeLabKernel } from "../fake";
import { pci } from "../fake/pci";
import { formatInventory, getHostInventory } from "../../provider/inventory";
import { busSiblings, resetCapability, vendorResetFamily } from "../../provider/reset/capability";

const facts = (over: Partial<Parameters<typeof resetCapability>[0]> = {}) => ({ vendor: "10de", device: "2204", resetMethods: ["flr", "bus"], busSiblings: 1, vendorResetLoaded: false, ...over });

describe("vendor-reset's device table", () => {
    test.each([
        ["1002", "731f", "Navi 10"],
        ["0x1002", "0x67DF", "Polaris 10"],
        ["1002", "687f", "Vega 10"],
        ["1002", "738c", "Arcturus (Instinct MI100)"],
        ["1002", "7340", "Navi 14"],
    ])("%s:%s is %s", (vendor, device, family) => expect(vendorResetFamily(vendor, device)).toBe(family));

    test("a GPU vendor-reset does not handle (Navi 21, an NVIDIA card, another vendor's 731f) is not in it", () => {
        expect(vendorResetFamily("1002", "73bf")).toBeUndefined();
        expect(vendorResetFamily("10de", "2204")).toBeUndefined();
        expect(vendorResetFamily("8086", "731f")).toBeUndefined();
    });
});

describe("resetCapability", () => {
    test("an FLR-capable GPU resets by flr, the first method the kernel tries", () => {
        expect(resetCapability(facts())).toMatchObject({ verdict: "ok", method: "flr", text: "resets by flr" });
    });

    test("a bus reset counts only for a function alone on its bus: a GPU with its audio function has none", () => {
        const gpu = resetCapability(facts({ resetMethods: ["bus"], busSiblings: 1 }));
        expect(gpu.verdict).toBe("none");
        expect(gpu.method).toBeUndefined();
        expect(gpu.text).toMatch(/^no reset of this function alone \(reset_method: bus; .*1 other function shares it\)/);
        expect(resetCapability(facts({ resetMethods: ["bus"], busSiblings: 0 }))).toMatchObject({ verdict: "ok", method: "bus" });
        expect(resetCapability(facts({ resetMethods: ["pm", "bus"], busSiblings: 3 }))).toMatchObject({ verdict: "ok", method: "pm" });
    });

    test("no reset_method at all says the device keeps its state between VMs", () => {
        expect(resetCapability(facts({ resetMethods: [] }))).toMatchObject({ verdict: "none", text: expect.stringContaining("reset_method empty") });
    });

    test("a Navi 10 says plainly that it needs vendor-reset, whatever the kernel lists, until vendor-reset is loaded and device_specific selected", () => {
        const navi = { vendor: "1002", device: "731f" };
        expect(resetCapability(facts({ ...navi, resetMethods: ["flr", "bus"] }))).toEqual({
            verdict: "vendor-reset",
            vendorReset: "Navi 10",
            text: "no working reset without vendor-reset (not loaded) — a VM restart may need a host reboot",
        });
        const loaded = resetCapability(facts({ ...navi, vendorResetLoaded: true, resetMethods: ["flr", "bus"] }));
        expect(loaded.verdict).toBe("vendor-reset");
        expect(loaded.text).toContain("reset_method device_specific (vendor-reset is loaded, but reset_method is flr bus)");
        expect(resetCapability(facts({ ...navi, vendorResetLoaded: true, resetMethods: ["device_specific", "flr"] }))).toMatchObject({ verdict: "ok", method: "device_specific" });
    });

    test("busSiblings counts the other functions of the same domain and bus", () => {
        const all = ["0000:00:01.0", "0000:01:00.0", "0000:01:00.1", "0000:02:00.0", "0001:01:00.0"];
        expect(busSiblings("0000:01:00.0", all)).toBe(1);
        expect(busSiblings("0000:02:00.0", all)).toBe(0);
        expect(busSiblings("0000:00:01.0", all)).toBe(0);
    });
});

describe("inventory shows what reset each GPU gets", () => {
    test("the lab's secondary GPU lists `bus` but cannot be reset alone, the console GPU has no reset; edu resets by bus", async () => {
        const inv = await getHostInventory(new FakeHost(fakeLabKernel()));
        const byAddress = new Map(inv.devices.map((d) => [d.address, d]));
        expect(byAddress.get("0000:01:00.0")!.reset.verdict).toBe("none");
        expect(byAddress.get("0000:02:00.0")!.reset).toMatchObject({ verdict: "ok", method: "bus" });
        expect(byAddress.get("0000:03:00.0")!.reset).toMatchObject({ verdict: "ok", method: "flr" });
        const text = formatInventory(inv);
        const section = text.slice(text.indexOf("resets (what the kernel can do when a VM lets go of the device)\n"));
        expect(section).toMatch(/^resets .*\n  0000:00:01\.0 \(1234:1111\): no reset method \(reset_method empty\)/);
        expect(section).toContain("  0000:01:00.0 (1234:1111): no reset of this function alone (reset_method: bus;");
        // Only GPUs and reset-bug devices are listed there: the edu device and the NVMe are not.
        expect(section).not.toContain("0000:02:00.0");
        expect(section).not.toContain("0000:03:00.0");
    });

    test("a Navi 10 on a host without vendor-reset is named with its family and the consequence", async () => {
        const k = fakeLabKernel();
        const gpu = pci(k).devices["0000:01:00.0"];
        gpu.vendor = "0x1002";
        gpu.device = "0x731f";
        gpu.resetMethods = ["flr", "bus"];
        const text = formatInventory(await getHostInventory(new FakeHost(k)));
        expect(text).toContain("  0000:01:00.0 (AMD Navi 10 1002:731f): no working reset without vendor-reset (not loaded) — a VM restart may need a host reboot\n");
    });
});
