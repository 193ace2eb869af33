/**
 * Whether a PCI function can be reset when a VM lets go of it, read from what sysfs says and what the kernel does
 * with it. Pure: the caller reads `reset_method`, the other devices on the function's bus and whether the
 * `vendor_reset` module is loaded, and gets a verdict and a line for the preview or the inventory.
 *
 * Kernel facts (drivers/pci/pci.c, Documentation/ABI/testing/sysfs-bus-pci, Linux 5.15+):
 * - `reset_method` lists, in the order the kernel tries them, the methods the device supports out of
 *   `device_specific`, `acpi`, `flr`, `af_flr`, `pm`, `bus` (and `cxl_bus` on newer kernels); writing names to it
 *   selects and orders them, writing `default` restores the kernel's list. An empty file (or none) means the kernel
 *   has no way to reset the function.
 * - `bus` (pci_reset_bus_function) resets the function through its hotplug slot or its parent bridge's secondary bus
 *   reset, and both refuse with ENOTTY when the function is not alone: a multi-function device (a GPU with its HDMI
 *   audio function) or other devices on the same bus. The lab showed it: 01:00.0 lists `bus`, writing its `reset`
 *   gives ENOTTY. vfio-pci can still reset such a bus as a whole when it owns every device on it (a "hot reset" at
 *   VM start and stop), but a reset of the single function on release cannot.
 * - Since 5.15 a device-specific reset registered by a module (vendor-reset) is used only when `device_specific` is
 *   selected in `reset_method`; vendor-reset's own udev rule writes it (gnif/vendor-reset, udev/99-vendor-reset.rules).
 */

/**
 * The GPUs vendor-reset handles (vendor 1002, AMD/ATI), by family, from gnif/vendor-reset `src/device-db.h` at commit
 * 084881c6 (2024-04-17). These are the GPUs of the "AMD reset bug": their listed resets (often `flr` or `bus`)
 * leave the GPU unusable for the next VM until the host reboots.
 */
const VENDOR_RESET_FAMILIES: Record<string, string[]> = {
    "Polaris 10": ["67c0", "67c1", "67c2", "67c4", "67c7", "67c8", "67c9", "67ca", "67cc", "67cf", "67d0", "67df", "6fdf"],
    "Polaris 11": ["67e0", "67e1", "67e3", "67e7", "67e8", "67e9", "67eb", "67ef", "67ff"],
    "Polaris 12": ["6980", "6981", "6985", "6986", "6987", "6995", "6997", "699f"],
    "Vega 10": ["6860", "6861", "6862", "6863", "6864", "6867", "6868", "6869", "686a", "686b", "686c", "686d", "686e", "686f", "687f"],
    "Vega 20": ["66a0", "66a1", "66a2", "66a3", "66a4", "66a7", "66af"],
    "Arcturus (Instinct MI100)": ["738c"],
    "Navi 10": ["7310", "7312", "7318", "7319", "731a", "731b", "731e", "731f"],
    "Navi 12": ["7360", "7362"],
    "Navi 14": ["7340", "7341", "7347", "734f"],
};

const VENDOR_RESET_DEVICES = new Map<string, string>(Object.entries(VENDOR_RESET_FAMILIES).flatMap(([family, ids]) => ids.map((id) => [`1002:${id}`, family] as const)));

/** The vendor-reset family of `vendor:device` (4 hex digits each, with or without `0x`), or undefined. */
export function vendorResetFamily(vendor: string, device: string): string | undefined {
    const id = (s: string) => s.trim().toLowerCase().replace(/^0x/, "").padStart(4, "0");
    return VENDOR_RESET_DEVICES.get(`${id(vendor)}:${id(device)}`);
}

/** The reset methods the kernel knows (`reset_method` values), in its own order. */
export const RESET_METHODS = ["device_specific", "acpi", "flr", "af_flr", "pm", "bus", "cxl_bus"] as const;

export interface ResetFacts {
    vendor: string;
    device: string;
    /** `reset_method` split into words; empty when the file is empty or absent. */
    resetMethods: string[];
    /** How many other PCI functions share the function's bus (0: it is alone, a `bus` reset can reach it). */
    busSiblings: number;
    /** `/sys/module/vendor_reset` exists. */
    vendorResetLoaded: boolean;
}

export interface ResetCapability {
    /**
     * `ok`: a listed method resets this function alone; `none`: no listed method can (nothing listed, or only a bus
     * reset that other functions on the bus prevent); `vendor-reset`: a reset-bug GPU whose working reset needs
     * vendor-reset loaded and `device_specific` selected, which is not the case now.
     */
    verdict: "ok" | "none" | "vendor-reset";
    /** The first method the kernel would try that can reset this function alone, when there is one. */
    method?: string;
    /** The vendor-reset family when the device is in its table. */
    vendorReset?: string;
    /** What the verdict means for the user, e.g. `no working reset without vendor-reset (not loaded) — ...`. */
    text: string;
}

/** What reset the kernel can give `f` when a VM lets go of it. */
export function resetCapability(f: ResetFacts): ResetCapability {
    const family = vendorResetFamily(f.vendor, f.device);
    const usable = f.resetMethods.filter((m) => (m === "bus" || m === "cxl_bus" ? f.busSiblings === 0 : true));
    if (family) {
        const selected = f.resetMethods[0] === "device_specific";
        if (f.vendorResetLoaded && selected) return { verdict: "ok", method: "device_specific", vendorReset: family, text: `resets with vendor-reset (${family})` };
        const why = !f.vendorResetLoaded ? "vendor-reset (not loaded)" : "reset_method device_specific (vendor-reset is loaded, but reset_method is " + (f.resetMethods.join(" ") || "empty") + ")";
        return { verdict: "vendor-reset", vendorReset: family, text: `no working reset without ${why} — a VM restart may need a host reboot` };
    }
    if (usable.length) return { verdict: "ok", method: usable[0], text: `resets by ${usable[0]}` };
    const text = f.resetMethods.length
        ? `no reset of this function alone (reset_method: ${f.resetMethods.join(" ")}; a bus reset needs it alone on its bus, and ${f.busSiblings} other function${f.busSiblings === 1 ? " shares" : "s share"} it) — only vfio-pci's reset of the whole bus at VM start/stop`
        : "no reset method (reset_method empty) — the device keeps its state between VMs";
    return { verdict: "none", text };
}

/** The other PCI functions on `address`'s bus (`dddd:bb`), among `all` addresses. */
export function busSiblings(address: string, all: Iterable<string>): number {
    const bus = address.slice(0, address.lastIndexOf(":"));
    let n = 0;
    for (const a of all) if (a !== address && a.slice(0, a.lastIndexOf(":")) === bus) n++;
    return n;
}
