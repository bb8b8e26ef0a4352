// Prints where a topic's partitions live and how far their logs go, one line per partition:
//   PARTITION leader LEADER replicas R1,R2,... isr I1,I2,... end END
// (LEADER -1: none; END: the log end offset a consumer can read up to). Run by `scripts/kafka/cluster describe` as a single-file source program:
//   java -cp '<kafka libs>/*' scripts/kafka/Describe.java BOOTSTRAP TOPIC [CLIENT_PROPERTIES]
// Exit 0 with the lines on stdout; exit 1 with the reason on stderr.
import java.io.FileInputStream;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.ListOffsetsResult;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.TopicPartitionInfo;

public class Describe {
    static String ids(List<Node> nodes) {
        return nodes.stream().map(n -> Integer.toString(n.id())).collect(Collectors.joining(","));
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: Describe BOOTSTRAP TOPIC [CLIENT_PROPERTIES]");
            System.exit(2);
        }
        Properties props = new Properties();
        if (args.length > 2) {
            try (FileInputStream in = new FileInputStream(args[2])) {
                props.load(in);
            }
        }
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "5000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "15000");
        try (Admin admin = Admin.create(props)) {
            TopicDescription topic = admin.describeTopics(List.of(args[1])).allTopicNames()
                    .get(20, TimeUnit.SECONDS).get(args[1]);
            Map<TopicPartition, OffsetSpec> latest = new HashMap<>();
            for (TopicPartitionInfo p : topic.partitions()) {
                latest.put(new TopicPartition(args[1], p.partition()), OffsetSpec.latest());
            }
            Map<TopicPartition, ListOffsetsResult.ListOffsetsResultInfo> ends =
                    admin.listOffsets(latest).all().get(20, TimeUnit.SECONDS);
            for (TopicPartitionInfo p : topic.partitions()) {
                Node leader = p.leader();
                long end = ends.get(new TopicPartition(args[1], p.partition())).offset();
                System.out.println(p.partition() + " leader " + (leader == null ? -1 : leader.id())
                        + " replicas " + ids(p.replicas()) + " isr " + ids(p.isr()) + " end " + end);
            }
        } catch (Exception e) {
            Throwable cause = e.getCause() != null ? e.getCause() : e;
            System.err.println(args[0] + ": cannot describe topic " + args[1] + ": "
                    + cause.getClass().getSimpleName() + ": " + cause.getMessage());
            System.exit(1);
        }
    }
}
