/**
 * The VM's state machine (planVm): from what the host shows to what the inputs say, as a table. A restart is
 * always stop then start; stop itself is graceful (powerdown → quit → signals).
 */
import { VmAction, VmDesired, VmObserved, planVm } from "../../provider/passthroughVm";

const ARGV = ["qemu-system-x86_64", "-name", "vm"];
const running: VmObserved = { process: "alive", qmp: true, status: "running", commandLine: ARGV, missingDevices: [], pinningOk: true };
const absent: VmObserved = { process: "absent", qmp: false, missingDevices: [], pinningOk: true };
const want = (o: Partial<VmDesired> = {}): VmDesired => ({ running: true, commandLine: ARGV, ...o });

describe.each<[string, VmDesired, VmObserved, VmAction[], RegExp]>([
    ["wanted running, not running → start", want(), absent, ["start"], /not running/],
    ["wanted running with pinning, not running → start and pin", want({ pinning: [1, 2] }), absent, ["start", "pin"], /not running/],
    ["running as wanted → nothing", want(), running, [], /running as wanted/],
    ["wanted stopped, running → stop", want({ running: false }), running, ["stop"], /running: false/],
    ["wanted stopped, stopped → nothing", want({ running: false }), absent, [], /stopped, as wanted/],
    ["the command line changed → restart", want({ commandLine: [...ARGV, "-m", "2G"] }), running, ["stop", "start"], /command line changed/],
    ["QMP does not answer → restart (stop falls back to signals)", want(), { ...running, qmp: false, status: undefined }, ["stop", "start"], /does not answer QMP/],
    ["guest shut down under -no-shutdown → restart", want(), { ...running, status: "shutdown" }, ["stop", "start"], /state shutdown/],
    ["guest panicked → restart", want(), { ...running, status: "guest-panicked" }, ["stop", "start"], /state guest-panicked/],
    ["a device vanished from query-pci → restart", want(), { ...running, missingDevices: ["hostdev1 (PCI device 0000:01:00.1)"] }, ["stop", "start"], /devices missing: hostdev1/],
    ["paused → continue", want(), { ...running, status: "paused" }, ["cont"], /status paused/],
    ["pinning lost → pin again, no restart", want({ pinning: [1] }), { ...running, pinningOk: false }, ["pin"], /pinning lost/],
    ["wanted stopped, QEMU wedged → stop", want({ running: false }), { ...running, qmp: false }, ["stop"], /running: false/],
])("%s", (_name, desired, observed, actions, reason) => {
    test("plan", () => {
        const p = planVm(desired, observed);
        expect(p.actions).toEqual(actions);
        expect(p.reason).toMatch(reason);
    });
});
