import { SshHost } from "../../provider/host/ssh";
import { labSuite } from "../lab/labState";
import { resetContract } from "./reset.contract";

const { describe: labDescribe, lab } = labSuite();
let host: SshHost | undefined;
resetContract(labDescribe, () => (host ??= new SshHost(lab!.connection)) && { host });
afterAll(() => host?.close());
