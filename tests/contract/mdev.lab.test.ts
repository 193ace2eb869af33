import { SshHost } from "../../provider/host/ssh";
import { labSuite } from "../lab/labState";
import { startNestedQemu, stopNestedQemu } from "../lab/nestedQemu";
import { mdevContract } from "./mdev.contract";

const { describe: labDescribe, lab } = labSuite();
let host: SshHost | undefined;
mdevContract(labDescribe, () => ({
    host: (host ??= new SshHost(lab!.connection)),
    async hold(uuid) {
        // A real VM: nested QEMU opening the mdev (paused with -S; it holds /dev/vfio/<group> all the same).
        const vm = await startNestedQemu(lab!, [{ sysfsdev: `/sys/bus/mdev/devices/${uuid}` }], "/run/pv-mdev-contract.pid");
        if (vm.code !== 0) throw new Error(`nested QEMU refused the mdev: ${vm.stderr}`);
        return () => stopNestedQemu(lab!, "/run/pv-mdev-contract.pid");
    },
}));
afterAll(async () => {
    if (lab) await stopNestedQemu(lab, "/run/pv-mdev-contract.pid");
    await host?.close();
});
