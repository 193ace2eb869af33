import { SshHost } from "../../provider/host/ssh";
import { labSuite } from "../lab/labState";
import { pciContract } from "./pci.contract";

const { describe: labDescribe, lab } = labSuite();
let host: SshHost | undefined;
pciContract(labDescribe, () => (host ??= new SshHost(lab!.connection)) && { host });
afterAll(() => host?.close());
