"""
Microsoft's clouds: where a tenant's identity platform, Exchange Online SMTP endpoint and
Microsoft Graph live, and the resources its OAuth scopes name.  C{cloud = "global" |
"usgov" | "usgov-dod" | "china"} on a Microsoft account picks a row; explicit
C{authority}, C{smtp_host} and C{graph_url} still win.

Sources:
- Entra authority hosts (login.microsoftonline.us, login.partner.microsoftonline.cn):
  https://learn.microsoft.com/entra/identity-platform/authentication-national-cloud
- Graph root endpoints (graph.microsoft.us, dod-graph.microsoft.us,
  microsoftgraph.chinacloudapi.cn) and "any permission scope that contains the Microsoft
  Graph domain MUST use the domain of the national cloud's root endpoint":
  https://learn.microsoft.com/graph/deployments and
  https://learn.microsoft.com/graph/sdks/national-clouds
- Exchange Online hosts (GCC High: outlook.office365.us / smtp.office365.us; DoD:
  outlook-dod.office365.us; 21Vianet: partner.outlook.cn / smtp.partner.outlook.cn):
  the endpoint lists at https://endpoints.office.com/endpoints/USGovGCCHigh,
  .../USGovDoD and .../China (Microsoft 365 URLs and IP address ranges).  Not found in
  the stored pages: verify them there before relying on them.

Pure data; no I/O.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Cloud:
    name: str
    authority: str
    smtp_host: str
    graph_url: str
    #: The Exchange Online resource (application ID URI) of SMTP tokens.
    outlook_resource: str
    #: The resource of delegated SMTP.Send (the global cloud uses outlook.office.com).
    outlook_delegated_resource: str
    graph_resource: str

    def smtp_app_scope(self) -> str:
        return f"{self.outlook_resource}/.default"

    def smtp_delegated_scope(self) -> str:
        return f"{self.outlook_delegated_resource}/SMTP.Send"

    def graph_app_scope(self) -> str:
        return f"{self.graph_resource}/.default"

    def graph_delegated_scope(self) -> str:
        return f"{self.graph_resource}/Mail.Send"


CLOUDS: dict[str, Cloud] = {
    "global": Cloud("global", "https://login.microsoftonline.com", "smtp.office365.com",
                    "https://graph.microsoft.com/v1.0", "https://outlook.office365.com",
                    "https://outlook.office.com", "https://graph.microsoft.com"),
    "usgov": Cloud("usgov", "https://login.microsoftonline.us", "smtp.office365.us",
                   "https://graph.microsoft.us/v1.0", "https://outlook.office365.us",
                   "https://outlook.office365.us", "https://graph.microsoft.us"),
    "usgov-dod": Cloud("usgov-dod", "https://login.microsoftonline.us",
                       "outlook-dod.office365.us", "https://dod-graph.microsoft.us/v1.0",
                       "https://outlook-dod.office365.us",
                       "https://outlook-dod.office365.us", "https://dod-graph.microsoft.us"),
    "china": Cloud("china", "https://login.partner.microsoftonline.cn",
                   "smtp.partner.outlook.cn", "https://microsoftgraph.chinacloudapi.cn/v1.0",
                   "https://partner.outlook.cn", "https://partner.outlook.cn",
                   "https://microsoftgraph.chinacloudapi.cn"),
}


def cloud_of(name: str) -> Cloud:
    return CLOUDS.get(name, CLOUDS["global"])
