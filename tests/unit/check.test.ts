import { UNKNOWN, validate } from "../../provider/check";

describe("schema validation tolerates what preview does not know yet", () => {
    test("a selector object with an unknown field raises no string-branch complaint", () => {
        const r = validate("iommu-binding.schema.json", { device: { vendor: UNKNOWN, device: "2204" } });
        expect(r.failures).toEqual([]);
    });
    test("a wholly unknown device passes; a wrong type next to it is still reported", () => {
        const r = validate("iommu-binding.schema.json", { device: UNKNOWN, wholeGroup: "yes" });
        expect(r.failures).toEqual([{ property: "wholeGroup", reason: "wholeGroup must be boolean" }]);
    });
    test("a value that is neither branch gets one merged message", () => {
        const r = validate("iommu-binding.schema.json", { device: 42 });
        expect(r.failures).toEqual([{ property: "device", reason: "device must be string or object" }]);
    });
    test("defaults are applied and the engine's __provider is kept", () => {
        const r = validate<any>("iommu-binding.schema.json", { device: "01:00.0", __provider: "x" });
        expect(r.inputs).toMatchObject({ driver: "vfio-pci", wholeGroup: true, allowBootVga: false, persistent: false, __provider: "x" });
    });
});
