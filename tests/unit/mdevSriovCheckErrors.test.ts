/**
 * What check reports when the host cannot be read: an unreachable host is the `connection` field's problem, any
 * other failure the device field's, for IommuBinding, MdevInstance and VirtualFunctions alike (provider/checkOnHost.ts).
 */
import { ConnectionError } from "../../provider/host/ssh";
import { Host } from "../../provider/host/types";
import { check as bindingCheck } from "../../provider/iommuBinding";
import { check as mdevCheck } from "../../provider/mdevInstance";
import { check as vfCheck } from "../../provider/virtualFunctions";

/** A host whose every batch fails with `error`. */
const failing = (error: Error): Host => ({
    name: "broken",
    roundTrips: 0,
    run: () => Promise.reject(error),
    withLock(fn) {
        return fn(this);
    },
    openUnixSocket: () => Promise.reject(error),
    close: () => Promise.resolve(),
});

const unreachable = new ConnectionError("ssh root@gpu-box:22: connect ECONNREFUSED");
/** Named like one, but not a ConnectionError: the property comes from the class, not the name. */
const lookalike = Object.assign(new Error("sysfs said no"), { name: "ConnectionError" });

test.each<[string, string, Error]>([
    ["an unreachable host", "connection", unreachable],
    ["another failure", "parent", lookalike],
])("MdevInstance check on %s reports it on %s", async (_what, property, error) => {
    const c = await mdevCheck({}, { parent: "mtty", type: "mtty-1", uuid: "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001" }, failing(error));
    expect(c.failures).toEqual([{ property, reason: error.message }]);
});

test.each<[string, string, Error]>([
    ["an unreachable host", "connection", unreachable],
    ["another failure", "physicalFunction", lookalike],
])("VirtualFunctions check on %s reports it on %s", async (_what, property, error) => {
    const c = await vfCheck({}, { physicalFunction: "0000:03:00.0", count: 1 }, failing(error));
    expect(c.failures).toEqual([{ property, reason: error.message }]);
});

test.each<[string, string, Error]>([
    ["an unreachable host", "connection", unreachable],
    ["another failure", "device", lookalike],
])("IommuBinding check on %s reports it on %s", async (_what, property, error) => {
    const c = await bindingCheck({}, { device: "0000:01:00.0" }, failing(error));
    expect(c.failures).toEqual([{ property, reason: error.message }]);
});
