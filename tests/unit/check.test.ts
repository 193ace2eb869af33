/**
 * The one schema-error formatter (provider/schemaErrors) as every resource's check shows it: what the field is and
 * an example from the schema instead of a regex, "did you mean" for an unknown key or enum value, and tolerance of
 * values that are not known yet during preview.
 */
import { UNKNOWN, validate } from "../../provider/check";
import { closest } from "../../provider/schemaErrors";

const reasons = (schema: string, inputs: Record<string, unknown>) => validate(schema, inputs).failures.map((f) => `${f.property} | ${f.reason}`);

describe("schema validation tolerates what preview does not know yet", () => {
    test("a selector object with an unknown field raises no string-branch complaint", () => {
        const r = validate("iommu-binding.schema.json", { device: { vendor: UNKNOWN, device: "2204" } });
        expect(r.failures).toEqual([]);
    });
    test("a wholly unknown device passes; a wrong type next to it is still reported", () => {
        const r = validate("iommu-binding.schema.json", { device: UNKNOWN, wholeGroup: "yes" });
        expect(r.failures).toEqual([{ property: "wholeGroup", reason: 'wholeGroup: must be true or false, not "yes". Bind every non-bridge member of the device\'s IOMMU group too, so QEMU finds the group viable (the classic failure: the GPU\'s HDMI audio left on snd_hda_intel). false is allowed only when the rest of the group is already viable.' }]);
    });
    test("defaults are applied and the engine's __provider is kept", () => {
        const r = validate<any>("iommu-binding.schema.json", { device: "01:00.0", __provider: "x" });
        expect(r.inputs).toMatchObject({ driver: "vfio-pci", wholeGroup: true, allowBootVga: false, persistent: false, __provider: "x" });
    });
});

describe("every resource's schema errors say what the field is, an example and the fix (no regex)", () => {
    test("a driver name with a space", () => {
        const [r] = reasons("iommu-binding.schema.json", { device: "01:00.0", driver: "vfio pci" });
        expect(r).toBe(
            `driver | driver: "vfio pci" is not a valid driver. The driver the group's members are bound to: \`vfio-pci\`, \`pci-stub\`, or a vfio-pci variant driver; loaded with modprobe if not registered. A kernel PCI driver name, as a directory under /sys/bus/pci/drivers: letters, digits, '_', '.' and '-', no spaces or slashes. For example: "vfio-pci" or "pci-stub".`,
        );
        expect(r).not.toContain("^");
    });
    test("a device that is neither an address nor a selector: one message naming both forms with examples", () => {
        expect(reasons("iommu-binding.schema.json", { device: 42 })).toEqual([
            'device | device: must be a string or a map, not 42. The device: a PCI address (quoted in YAML), or a selector by vendor/device id that must match exactly one device. For example: "0000:01:00.0" or {"vendor":"10de","device":"2204"} or "01:00.0".',
        ]);
    });
    test.each([
        ["virtual-functions.schema.json", { physicalFunction: "3:00.0", count: 1 }, "physicalFunction", /^physicalFunction: "3:00\.0" is not a valid physicalFunction\. The PF's PCI address\. .* For example: "0000:01:00\.0" or "01:00\.0"\.$/],
        ["mdev-instance.schema.json", { parent: "mtty", uuid: "not-a-uuid" }, "uuid", /^uuid: "not-a-uuid" is not a valid uuid\. The mdev's UUID .* For example: "6c1f3e0a-4b9d-4c6e-9a51-0d2f7b8e1a35"\.$/],
        ["passthrough-vm.schema.json", { name: "vm", network: { mac: "52:54:00:12:34" } }, "network.mac", /^network\.mac: "52:54:00:12:34" is not a valid mac\. MAC address, six hex pairs .* For example: "52:54:00:12:34:56"\.$/],
        ["kvmfr-device.schema.json", { index: 0, mode: "rw-rw----" }, "mode", /^mode: "rw-rw----" is not a valid mode\. Octal mode of \/dev\/kvmfrN, quoted in YAML\. .* For example: "0660" or "0600"\.$/],
    ])("%s: a pattern error on %j names the field and shows an example", (schema, inputs, property, reason) => {
        const f = validate(schema, inputs).failures.find((x) => x.property === property);
        expect(f?.reason).toMatch(reason);
    });
    test.each([
        ["iommu-binding.schema.json", { device: "01:00.0", drvier: "vfio-pci" }, "drvier", "driver"],
        ["virtual-functions.schema.json", { physicalFunction: "03:00.0", count: 1, autoProbe: true }, "autoProbe", "autoprobe"],
        ["mdev-instance.schema.json", { parent: "mtty", typ: "mtty-1" }, "typ", "type"],
        ["kvmfr-device.schema.json", { index: 0, sizeMB: 32 }, "sizeMB", "sizeMb"],
        ["passthrough-vm.schema.json", { name: "vm", memoryMB: 1024 }, "memoryMB", "memoryMb"],
        ["passthrough-vm.schema.json", { name: "vm", cpu: { core: 2 } }, "cpu.core", "cores"],
    ])("%s: the unknown key %j gets \"did you mean\"", (schema, inputs, property, meant) => {
        const f = validate(schema, inputs).failures.find((x) => x.property === property);
        expect(f?.reason).toMatch(new RegExp(`^${property.replace(".", "\\.")}: unknown key "${property.split(".").pop()}"; did you mean "${meant}"\\? \\(allowed here: `));
    });
    test("an enum value close to an allowed one, a missing key, a bound", () => {
        expect(reasons("passthrough-vm.schema.json", { name: "vm", accel: "kv", memoryMb: 8 })).toEqual([
            'accel | accel: must be one of "kvm", "tcg", not "kv"; did you mean "kvm"?',
            "memoryMb | memoryMb: must be >= 16, not 8",
        ]);
        expect(reasons("virtual-functions.schema.json", { count: 1 })).toEqual([
            expect.stringMatching(/^physicalFunction \| physicalFunction: "physicalFunction" is required\. The PF's PCI address\./),
        ]);
    });
});

describe("did you mean", () => {
    test.each([
        ["persistant", ["device", "persistent"], "persistent"],
        ["WholeGroup", ["wholeGroup", "driver"], "wholeGroup"],
        ["colour", ["parent", "type"], undefined],
        ["vm", ["vms", "mdevs"], "vms"],
    ])("%s among %j → %s", (word, candidates, expected) => {
        expect(closest(word, candidates)).toBe(expected);
    });
});
